"""Full-batch semi-supervised heterogeneous DA: the whole source, the labelled target and the
unlabelled target as tensors, the same batch at every step (SSAN's training regime).

Batch contract (one dict per step, the same tensors every step)::

    {"source": (x_s, y_s), "target_labeled": (x_l, y_l), "target": (x_u, idx_u)}

``idx_u`` are the unlabelled rows' indices in the target domain. The unlabelled target is also the
evaluation set: validation and test see one batch ``(x_u, y_u)``. The tensors move to the model's
device once (:meth:`FullBatchDataModule.transfer_batch_to_device` keeps the moved copy), so a step
costs no DataLoader, collation or copy work.

Labelled target split (``labeled``):

* ``random``: ``labeled_per_class`` samples per class drawn without replacement by a generator
  seeded with ``seed`` and ``split`` (:func:`sample_per_class`); split ``i`` is reproducible.
* ``file``: the pre-drawn split ``split`` stored with the target domain (``info["splits"]``,
  e.g. DeCAF6's ``target_idx`` columns).

Row-space coordinates (``row_space=True``, on in ``experiment=hda/_protocol``): a domain with fewer rows
than features (DeCAF6 DSLR: 157 x 4096) is given in an orthonormal basis of its own row span: with
the QR decomposition ``X^T = Q R`` (float64), ``X = R^T Q^T`` and the model sees ``X Q = R^T``
(157 x 157). Nothing is lost: every row of the domain (labelled, unlabelled, evaluated) lies in the
span. The bases go to the model (``model_kwargs["input_bases"]``, ``d x n`` each), which builds and
initialises its first layer ``x W^T + b`` at the full width ``d`` as before (the same random draws)
and then keeps ``W Q`` (:class:`~lightning_da.models.projectors.DomainProjectors`): the same
function on every row of the domain. Trained by SGD (momentum, nesterov, weight decay) it is also
the same optimisation: the gradient ``dY^T X`` of ``W`` lies in the span, so ``W Q`` follows exactly
the SGD updates of the layer on ``X Q``, and the part of ``W`` outside the span, which the original
only decays, never reaches an output. It is not the same under an adaptive optimiser (Adam's
per-coordinate scaling is not rotation invariant) or for inputs outside the domain's rows. The
first layer's cost drops by ``d / n`` (4096 -> 157 for DSLR); every other layer is unchanged.
"""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch

from lightning_da.data.domain import DataError, Domain, check_same_classes


def sample_per_class(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Indices of ``k`` samples of every class of ``labels`` (0..C-1), drawn without replacement
    with ``torch.Generator().manual_seed(seed)``; sorted by class, then by draw order."""
    if k < 1:
        raise DataError(f"labeled_per_class must be at least 1, got {k}")
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in range(int(labels.max()) + 1):
        members = torch.nonzero(labels == c).flatten()
        if len(members) < k:
            raise DataError(f"class {c} has {len(members)} target samples, fewer than labeled_per_class={k}")
        picked.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.cat(picked)


def split_seed(seed: int, split: int) -> int:
    """The generator seed of random split ``split`` (distinct per seed and split)."""
    return seed * 1_000_003 + split


def row_space_coordinates(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(x Q, Q)`` for ``x`` (n x d, 0 < n < d): ``Q`` (d x n) an orthonormal basis of the row span
    from the QR decomposition ``x^T = Q R`` (float64), so ``x Q = R^T``, ``x = R^T Q^T`` and inner
    products are kept (``R^T R = x x^T``); returned in ``x``'s dtype. ``None`` when n >= d (no saving)."""
    n, d = x.shape
    if n == 0 or n >= d:
        return None
    q, r = torch.linalg.qr(x.double().T)
    return r.T.to(x.dtype).contiguous(), q.to(x.dtype).contiguous()


class RepeatedBatch:
    """An iterable that yields the same batch ``steps`` times (a full-batch "loader")."""

    def __init__(self, batch, steps: int):
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        batch = self.batch
        for _ in range(self.steps):
            yield batch


class FullBatchDataModule(L.LightningDataModule):
    """Source + semi-supervised target as full batches (see the module docstring).

    Args:
        domains: name -> callable building a :class:`Domain` of :class:`~lightning_da.data.features.FeatureTensors`.
        source, target: domain names.
        root: folder the domain files are read from (given to every builder as ``root``).
        domain_args: further keyword arguments for every builder.
        labeled: ``random`` or ``file`` (pre-drawn splits of the target file).
        labeled_per_class: k labelled target samples per class (``random``).
        split: which split (``random``: seeds the draw; ``file``: the stored split index).
        steps_per_epoch: training steps per epoch (SSAN: 3000 steps, one epoch).
        seed: base seed of the random splits.
        row_space: give a domain with fewer rows than features in row-space coordinates, and its
            basis to the model (see the module docstring; an exact speed-up under SGD).
    """

    multi_source = False
    eval_names = ["target"]

    def __init__(self, domains: dict[str, Callable[..., Domain]], source: str, target: str, root: str | None = None,
                 domain_args: dict | None = None, labeled: str = "random", labeled_per_class: int = 3, split: int = 0,
                 steps_per_epoch: int = 3000, seed: int = 0, row_space: bool = False):
        super().__init__()
        if labeled not in ("random", "file"):
            raise ValueError(f"data.labeled must be random or file, not {labeled!r}")
        for n in (source, target):
            if n not in domains:
                raise DataError(f"unknown domain {n!r}; this data config has: {sorted(domains)}")
        if source == target:
            raise DataError(f"source and target are the same domain {source!r}")
        self.builders, self.source_name, self.target_name = dict(domains), source, target
        self.source_names = [source]
        self.domain_args = dict(domain_args or {})
        if root is not None:
            self.domain_args["root"] = root
        self.labeled, self.labeled_per_class, self.split = labeled, labeled_per_class, split
        self.steps_per_epoch, self.seed, self.row_space = steps_per_epoch, seed, row_space
        self._device_cache: dict = {}
        self._build()

    def _build(self) -> None:
        src = self.builders[self.source_name](**self.domain_args)
        tgt = self.builders[self.target_name](**self.domain_args)
        self.classes = check_same_classes([src, tgt])
        xs, ys = src.train.features, src.train.labels
        xt, yt = tgt.train.features, tgt.train.labels
        self.feature_dims = {"source": xs.shape[1], "target": xt.shape[1]}
        self.input_bases: dict[str, torch.Tensor] = {}
        if self.row_space:
            xs, xt = self._row_space("source", xs), self._row_space("target", xt)
        if self.labeled == "random":
            labeled = sample_per_class(yt, self.labeled_per_class, split_seed(self.seed, self.split))
        else:
            splits = tgt.info.get("splits")
            if not splits:
                raise DataError(f"data.labeled=file but target domain {tgt.name!r} has no pre-drawn splits "
                                "(set splits_key in its config, or use data.labeled=random)")
            if self.split not in splits:
                raise DataError(f"split index {self.split} out of range: target {tgt.name!r} has splits {sorted(splits)}")
            labeled = splits[self.split]
            if len(torch.unique(labeled)) != len(labeled):
                raise DataError(f"pre-drawn split {self.split} of {tgt.name!r} repeats target samples")
        is_labeled = torch.zeros(len(yt), dtype=torch.bool)
        is_labeled[labeled] = True
        unlabeled = torch.nonzero(~is_labeled).flatten()
        if len(unlabeled) == 0:
            raise DataError(f"split {self.split} labels every sample of target {tgt.name!r}: nothing is left to adapt to or evaluate")
        missing = sorted(set(range(len(self.classes))) - set(yt[labeled].tolist()))
        if missing:
            raise DataError(f"split {self.split} of target {tgt.name!r} has no labelled sample of classes "
                            f"{[self.classes[c] for c in missing]}")
        self.labeled_index, self.unlabeled_index = labeled, unlabeled
        self.source_domain, self.target_domain = src, tgt
        self.train_batch = {"source": (xs, ys), "target_labeled": (xt[labeled], yt[labeled]),
                            "target": (xt[unlabeled], unlabeled)}
        self.eval_batch = (xt[unlabeled], yt[unlabeled])

    def _row_space(self, role: str, x: torch.Tensor) -> torch.Tensor:
        """``x`` in row-space coordinates (its basis kept in ``input_bases[role]``) when that is smaller."""
        reduced = row_space_coordinates(x)
        if reduced is None:
            return x
        self.input_bases[role] = reduced[1]
        return reduced[0]

    @property
    def target_eval_description(self) -> str:
        return (f"the unlabelled target ({len(self.unlabeled_index)} samples; transductive), labelled split "
                f"{self.split} ({len(self.labeled_index)} samples) excluded")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_dims(self) -> dict[str, int]:
        """The domains' feature widths (before any row-space coordinates)."""
        return dict(self.feature_dims)

    @property
    def model_kwargs(self) -> dict:
        """Keyword arguments the method needs from the data (``train.build`` passes them on): the
        feature widths and, with ``row_space``, the bases of the domains given in row-space coordinates."""
        return {"input_dims": self.input_dims, **({"input_bases": dict(self.input_bases)} if self.input_bases else {})}

    def train_dataloader(self):
        return RepeatedBatch(self.train_batch, self.steps_per_epoch)

    def val_dataloader(self):
        return [RepeatedBatch(self.eval_batch, 1)]

    def test_dataloader(self):
        return [RepeatedBatch(self.eval_batch, 1)]

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """Move each full batch to ``device`` once and hand out the moved copy afterwards."""
        key = (id(batch), str(device))
        cached = self._device_cache.get(key)
        if cached is None or cached[0] is not batch:
            moved = super().transfer_batch_to_device(batch, device, dataloader_idx)
            cached = self._device_cache[key] = (batch, moved)
        return cached[1]
