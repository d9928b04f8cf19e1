"""Class-level (semantic) alignment losses of SSAN (Li et al., ACM MM 2020), vectorised over classes.

Notation: source features / logits / labels ``f_s, z_s, y_s``; labelled target ``f_l, z_l, y_l``;
unlabelled target ``f_u, z_u``; C classes; ``1[y = k]`` the one-hot membership.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def class_sums(x: torch.Tensor, y: torch.Tensor, num_classes: int,
               mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums ``S_k = sum_{i: y_i = k, mask_i} x_i`` ``(C, d)`` and counts ``n_k`` ``(C,)``
    (a boolean ``mask`` selects rows without a host sync)."""
    onehot = F.one_hot(y, num_classes).to(x.dtype)
    if mask is not None:
        onehot = onehot * mask.to(x.dtype).unsqueeze(1)
    return onehot.t() @ x, onehot.sum(0)


def class_means(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class means ``mu_k = S_k / n_k`` ``(C, d)`` (zero for absent classes) and counts ``n_k``."""
    sums, counts = class_sums(x, y, num_classes)
    return sums / counts.clamp(min=1).unsqueeze(1), counts


def implicit_semantic_correlation_loss(z_s: torch.Tensor, y_s: torch.Tensor, z_l: torch.Tensor, y_l: torch.Tensor,
                                       alpha: float = 0.1, temperature: float = 5.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SSAN's L_ISC (``knowledge_distillation_loss_func``); returns ``(loss, hard, soft)`` terms.

        q_k    = mean_{i: y_s,i = k} softmax(z_s,i / T)               (source class soft labels,
                                                                        NOT detached: gradients reach
                                                                        the source branch)
        p_j    = softmax(z_l,j)                                        (T = 1 on the target side)
        L_soft = sum_k [ - mean_{j: y_l,j = k} sum_c q_k[c] log(p_j[c] + 1e-5) ]
        L_ISC  = (1 - alpha) CE(z_l, y_l) + alpha L_soft

    The soft term sums over classes and averages within a class; classes without labelled target
    samples contribute nothing (the original's mean over an empty set would be NaN). ``alpha == 1``
    returns plain ``CE(z_l, y_l)`` with zero soft term (the original flag's quirk).
    """
    hard = F.cross_entropy(z_l, y_l)
    if alpha == 1.0:
        zero = hard.new_zeros(())
        return hard, hard, zero
    num_classes = z_s.shape[1]
    q, _ = class_means(F.softmax(z_s / temperature, dim=1), y_s, num_classes)   # (C, C)
    per_sample = -(q[y_l] * torch.log(F.softmax(z_l, dim=1) + 1e-5)).sum(1)    # (n_l,)
    sums, counts = class_sums(per_sample.unsqueeze(1), y_l, num_classes)
    soft = (sums.squeeze(1) / counts.clamp(min=1)).sum()
    return (1 - alpha) * hard + alpha * soft, (1 - alpha) * hard, alpha * soft


def centroid_alignment_loss(f_s: torch.Tensor, y_s: torch.Tensor, f_t: torch.Tensor, y_t: torch.Tensor,
                            num_classes: int, prototype: str = "three", target_mask: torch.Tensor | None = None) -> torch.Tensor:
    """SSAN's explicit semantic alignment L_ESA (triplet-centroid alignment), summed squared errors:

        mu_s^k  = mean of source features of class k
        mu_t^k  = mean of target features of class k (labelled + selected pseudo-labelled)
        mu_st^k = mean over the union of both (a pooled mean, not the mean of the two means)
        three:  L = sum_k ||mu_s^k - mu_t^k||^2 + ||mu_s^k - mu_st^k||^2 + ||mu_t^k - mu_st^k||^2
        two:    L = sum_k ||mu_s^k - mu_t^k||^2

    ``target_mask`` keeps only the selected target rows. Classes absent from the source or the
    target are left out (the original would produce NaN). Centroids carry gradients to both projectors.
    """
    if prototype not in ("two", "three"):
        raise ValueError(f"prototype must be two or three, not {prototype!r}")
    sum_s, n_s = class_sums(f_s, y_s, num_classes)
    sum_t, n_t = class_sums(f_t, y_t, num_classes, target_mask)
    present = ((n_s > 0) & (n_t > 0)).to(f_s.dtype).unsqueeze(1)
    mu_s = sum_s / n_s.clamp(min=1).unsqueeze(1)
    mu_t = sum_t / n_t.clamp(min=1).unsqueeze(1)
    loss = ((mu_s - mu_t).square() * present).sum()
    if prototype == "three":
        mu_st = (sum_s + sum_t) / (n_s + n_t).clamp(min=1).unsqueeze(1)
        loss = loss + ((mu_s - mu_st).square() * present).sum() + ((mu_t - mu_st).square() * present).sum()
    return loss


def cosine_threshold(step: int) -> float:
    """``Cosine_threshold``'s schedule ``1 / (1 + exp(-0.8 (step + 1))) - 0.01`` (after PFAN)."""
    return 1.0 / (1.0 + math.exp(-0.8 * (step + 1))) - 0.01


#: ``Euclidean_threshold``'s fixed threshold, compared with the score ``-||f - c||^2`` (always <= 0,
#: so the original rejects every sample under this option: kept as is)
EUCLIDEAN_THRESHOLD = 0.2


@torch.no_grad()
def prototype_labels(f_u: torch.Tensor, f_ref: torch.Tensor, y_ref: torch.Tensor, num_classes: int,
                     mode: str = "Cosine", step: int = 0) -> torch.Tensor:
    """SSAN's geometric labels of the unlabelled target (``get_prototype_label``).

    Prototypes ``c_k`` = mean of ``f_ref`` of class k (SSAN: source and labelled target together).
    Score ``s_k(f) = cos(f, c_k)`` (``Cosine*``) or ``-||f - c_k||^2`` (``Euclidean*``); label
    ``argmax_k s_k``. The ``*_threshold`` modes set the label to -1 where ``max_k s_k`` is below
    :func:`cosine_threshold` (step) or :data:`EUCLIDEAN_THRESHOLD`.
    """
    centers, _ = class_means(f_ref, y_ref, num_classes)
    if mode.startswith("Cosine"):
        scores = F.normalize(f_u, dim=1, eps=1e-8) @ F.normalize(centers, dim=1, eps=1e-8).t()
    elif mode.startswith("Euclidean"):
        scores = -torch.cdist(f_u, centers).square()
    else:
        raise ValueError(f"unknown prototype mode {mode!r}; choose Cosine, Euclidean, Cosine_threshold, Euclidean_threshold")
    value, label = scores.max(1)
    if mode.endswith("_threshold"):
        threshold = cosine_threshold(step) if mode.startswith("Cosine") else EUCLIDEAN_THRESHOLD
        label = torch.where(value < threshold, torch.full_like(label, -1), label)
    return label


def agreement_mask(z_u: torch.Tensor, f_u: torch.Tensor, f_ref: torch.Tensor, y_ref: torch.Tensor, num_classes: int,
                   mode: str | None = "Cosine", step: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """SSAN's pseudo-label refinement: network labels ``argmax z_u`` and the mask of samples whose
    network label equals the geometric label (:func:`prototype_labels`); ``mode=None`` keeps all."""
    y_net = z_u.detach().argmax(1)
    if mode is None or mode == "None":
        return y_net, torch.ones_like(y_net, dtype=torch.bool)
    return y_net, y_net == prototype_labels(f_u.detach(), f_ref.detach(), y_ref, num_classes, mode, step)
