"""Pseudo labels for the unlabelled target: clustering, a per-sample store, and a prediction pass.

* :func:`cluster_pseudo_labels`: SHOT-style weighted-centroid clustering with cosine distance, the
  ``obtain_label`` step CGDM uses (methods spec, section 2(d)).
* :class:`PseudoLabelStore`: one label (and confidence) per target train sample, kept in buffers so
  it moves with the module's device and travels with checkpoints. Target training batches are
  ``(x, idx)`` (``data.domain.WithIndex``); ``idx`` is the key into the store. Any method that keeps
  per-sample target labels (CGDM's clustering, M2CAN's UACR selection) can use it.
* :func:`~lightning_da.eval_pass.predict_dataset` (re-exported here): one no-grad pass of a
  ``(features, probs)`` callable over a loader.

Typical use (CGDM, at a pseudo-label refresh)::

    feats, probs, idx = predict_dataset(lambda x: (g(x), softmax(f1(g(x)) + f2(g(x)))), loader, device,
                                        indexed=True)
    store.update(idx, cluster_pseudo_labels(feats, probs))
    ...
    x_t, idx = target_indices(batch["target"])       # lightning_da.data.batches
    y_hat, has = store[idx], store.mask(idx)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_da.data.batches import NEEDS_INDEX
from lightning_da.eval_pass import eval_mode, predict_dataset

__all__ = ["PseudoLabelStore", "cluster_dataset", "cluster_pseudo_labels", "predict_dataset"]



# ---------------------------------------------------------------------------------------------- clustering
def _work_dtype(t: torch.Tensor) -> torch.dtype:
    # float64 like the original's numpy/scipy path, where the device has it (MPS does not)
    return torch.float32 if t.device.type == "mps" else torch.float64


def _assign(features: torch.Tensor, weights: torch.Tensor, eps: float) -> torch.Tensor:
    """Centroids ``c_k = sum_i w_ik f_i / (sum_i w_ik + eps)``, then each row's nearest centroid by cosine
    distance. A class with zero total weight has no centroid and is never chosen."""
    mass = weights.sum(0)                                     # (K,)
    centroids = (weights.T @ features) / (mass + eps)[:, None]  # (K, D)
    centroids = centroids / centroids.norm(dim=1, keepdim=True).clamp_min(torch.finfo(centroids.dtype).tiny)
    sim = features @ centroids.T                              # cosine similarity, rows of features are unit
    sim = sim.masked_fill((mass <= 0)[None, :], float("-inf"))
    return sim.argmax(1)                                      # argmin of (1 - cos); first index on ties


@torch.no_grad()
def cluster_pseudo_labels(features: torch.Tensor, probs: torch.Tensor, rounds: int = 2,
                          eps: float = 1e-8) -> torch.Tensor:
    r"""Pseudo labels by weighted-centroid clustering with cosine distance (SHOT's ``obtain_label``,
    as CGDM uses it: no class filtering, no threshold).

    With features :math:`x_i \in \mathbb{R}^D` and class probabilities :math:`p_{ik}` of N samples:

    1. :math:`f_i = [x_i; 1] / \lVert [x_i; 1] \rVert_2` (a constant 1 appended, rows L2-normalised).
    2. Soft round: :math:`c_k = \sum_i p_{ik} f_i / (\sum_i p_{ik} + \epsilon)` and
       :math:`\hat y_i = \arg\min_k d(f_i, c_k)` with the cosine distance
       :math:`d(u, v) = 1 - u^\top v / (\lVert u\rVert \lVert v\rVert)`.
    3. ``rounds - 1`` hard rounds: the same with :math:`p_{ik}` replaced by the one-hot
       :math:`[\hat y_i = k]` of the current labels.

    ``rounds=2`` is the original (one soft round and one hard round); ``rounds=1`` is the soft round
    only. A class whose total weight is zero in a round (e.g. no sample assigned to it in a hard
    round) has no centroid and receives no sample in that round; the original computes a zero
    centroid there, whose cosine distance is undefined (NaN). Ties go to the lowest class index.

    Args:
        features: ``(N, D)`` features (any float dtype / device).
        probs: ``(N, K)`` non-negative soft assignments, usually softmax outputs.
        rounds: total number of assignment rounds, at least 1.
        eps: added to each centroid's weight sum.

    Returns:
        ``(N,)`` long tensor of labels in ``[0, K)`` on ``features``' device.
    """
    if features.ndim != 2 or probs.ndim != 2:
        raise ValueError(f"features must be (N, D) and probs (N, K); got shapes {tuple(features.shape)} "
                         f"and {tuple(probs.shape)}")
    if len(features) != len(probs):
        raise ValueError(f"features has {len(features)} rows but probs has {len(probs)}")
    if len(features) == 0:
        raise ValueError("cannot cluster an empty set of samples")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, not {rounds}")
    dtype = _work_dtype(features)
    f = torch.cat([features.to(dtype), features.new_ones(len(features), 1, dtype=dtype)], dim=1)
    f = f / f.norm(dim=1, keepdim=True)  # norm >= 1 thanks to the appended 1
    weights = probs.to(device=f.device, dtype=dtype)
    labels = _assign(f, weights, eps)
    eye = torch.eye(probs.shape[1], device=f.device, dtype=dtype)
    for _ in range(rounds - 1):
        labels = _assign(f, eye[labels], eps)
    return labels


# ---------------------------------------------------------------------------------------------- store
class PseudoLabelStore(nn.Module):
    """One pseudo label per target train sample, keyed by the sample's index.

    Buffers (saved in ``state_dict``, moved by ``.to(device)``):

    * ``labels``: long ``(num_samples,)``; ``-1`` = no label yet.
    * ``confidence``: float ``(num_samples,)``; a per-sample score (e.g. M2CAN's selection score),
      ``1`` when a label is given without one, ``0`` where there is no label.

    Writing ``-1`` as a label removes a sample's label (e.g. samples not selected this epoch).
    Indices may be a tensor (any device), a list or a numpy array of integers; indices out of
    ``[0, num_samples)`` raise, as does ``None`` (a loader without indices). When an update repeats
    an index, which of its values is kept is unspecified.
    """

    def __init__(self, num_samples: int, num_classes: int):
        super().__init__()
        if num_samples < 1 or num_classes < 1:
            raise ValueError(f"num_samples and num_classes must be positive, got {num_samples} and {num_classes}")
        self.num_samples, self.num_classes = int(num_samples), int(num_classes)
        self.register_buffer("labels", torch.full((self.num_samples,), -1, dtype=torch.long))
        self.register_buffer("confidence", torch.zeros(self.num_samples))

    def extra_repr(self) -> str:
        return f"num_samples={self.num_samples}, num_classes={self.num_classes}"

    def __len__(self) -> int:
        return self.num_samples

    # ------------------------------------------------------------------ validation
    def _index(self, indices: Any) -> torch.Tensor:
        if indices is None:
            raise ValueError(f"pseudo labels were looked up without sample indices: {NEEDS_INDEX}")
        idx = torch.as_tensor(indices, device=self.labels.device)
        if idx.dtype == torch.bool or idx.dtype.is_floating_point or idx.dtype.is_complex:
            raise ValueError(f"pseudo-label indices must be integers, got dtype {idx.dtype}")
        idx = idx.long()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_samples):
            raise ValueError(f"pseudo-label indices must lie in [0, {self.num_samples}) (the target train set), "
                             f"got values from {int(idx.min())} to {int(idx.max())}")
        return idx

    def _values(self, labels: Any, confidence: Any, n: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.labels.device
        lab = torch.as_tensor(labels, device=device)
        if lab.dtype == torch.bool or lab.dtype.is_floating_point or lab.dtype.is_complex:
            raise ValueError(f"pseudo labels must be integers, got dtype {lab.dtype}")
        lab = lab.long().reshape(-1)
        if len(lab) != n:
            raise ValueError(f"got {len(lab)} pseudo labels for {n} {what}")
        if lab.numel() and (int(lab.min()) < -1 or int(lab.max()) >= self.num_classes):
            raise ValueError(f"pseudo labels must lie in [0, {self.num_classes}) or be -1 (no label), "
                             f"got values from {int(lab.min())} to {int(lab.max())}")
        if confidence is None:
            conf = torch.ones(n, device=device, dtype=self.confidence.dtype)
        else:
            conf = torch.as_tensor(confidence, device=device, dtype=self.confidence.dtype).reshape(-1)
            if len(conf) != n:
                raise ValueError(f"got {len(conf)} confidences for {n} {what}")
        return lab, torch.where(lab >= 0, conf, torch.zeros_like(conf))

    # ------------------------------------------------------------------ writing
    @torch.no_grad()
    def update(self, indices: Any, labels: Any, confidence: Any = None) -> None:
        """Set the labels (and confidences) of the samples ``indices``; others keep theirs."""
        idx = self._index(indices).reshape(-1)
        lab, conf = self._values(labels, confidence, len(idx), "indices")
        self.labels[idx] = lab
        self.confidence[idx] = conf

    @torch.no_grad()
    def replace_all(self, labels: Any, confidence: Any = None) -> None:
        """Replace every sample's label; ``labels[i]`` belongs to target sample ``i``."""
        lab, conf = self._values(labels, confidence, self.num_samples, "target samples (the whole target train set)")
        self.labels.copy_(lab)
        self.confidence.copy_(conf)

    @torch.no_grad()
    def clear(self) -> None:
        """Forget every label."""
        self.labels.fill_(-1)
        self.confidence.zero_()

    # ------------------------------------------------------------------ reading
    def __getitem__(self, indices: Any) -> torch.Tensor:
        """Labels of the samples ``indices`` (``-1`` where there is none), on the store's device."""
        return self.labels[self._index(indices)]

    def confidence_of(self, indices: Any) -> torch.Tensor:
        """Confidences of the samples ``indices`` (``0`` where there is no label)."""
        return self.confidence[self._index(indices)]

    def mask(self, indices: Any) -> torch.Tensor:
        """Bool tensor: which of the samples ``indices`` have a label."""
        return self[indices] >= 0

    @property
    def valid(self) -> torch.Tensor:
        """Bool ``(num_samples,)``: which samples have a label."""
        return self.labels >= 0

    @property
    def has_labels(self) -> bool:
        """True once any sample has a label."""
        return bool(self.valid.any())

    @property
    def num_labelled(self) -> int:
        return int(self.valid.sum())


def cluster_dataset(module: nn.Module, loader, rounds: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """``(indices, labels)`` of every sample of the target ``loader`` (``(x, idx)`` batches):
    ``module.predict_features`` in eval mode, softmax, then :func:`cluster_pseudo_labels`
    (CGDM's and SHOT's refresh)."""
    def forward(x):
        f, z = module.predict_features(x)
        return f, torch.softmax(z, dim=1)

    with eval_mode(module):
        feats, probs, idx = predict_dataset(forward, loader, next(module.parameters()).device, indexed=True)
    return idx, cluster_pseudo_labels(feats, probs, rounds=rounds)
