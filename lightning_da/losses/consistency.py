"""Consistency losses between two views of the target batch: self-ensembling's mean-teacher terms and
the class-confusion consistency of TLlib's CC-loss method.

Self-ensembling (French, Mackiewicz & Fisher, "Self-ensembling for visual domain adaptation",
ICLR 2018), with ``p`` the student's and ``q`` the teacher's softmax on two views of target sample i,
``m_i = 1[max_c q_ic > tau]`` (confidence thresholding):

* :func:`squared_consistency`: ``L_cons = 1/B sum_i m_i sum_c (p_ic - q_ic)^2``
  (TLlib's ``L2ConsistencyLoss`` with the mask; the mean runs over all B rows, masked ones count 0).
* :func:`class_balance_loss`: ``L_bal = BCE(mean_i p_i, 1/C)
  = -1/C sum_c [ 1/C log pbar_c + (1 - 1/C) log(1 - pbar_c) ]`` (logs clamped at -100, as
  ``F.binary_cross_entropy``); the method scales it by the fraction of confident rows, ``mean_i m_i``.

Class-confusion consistency (TLlib ``tllib.self_training.cc_loss.CCConsistency``, by the authors of
MCC: Jin et al., "Minimum Class Confusion for Versatile Domain Adaptation", ECCV 2020), on the rows
whose weak-view prediction at temperature T is confident, ``m_i = 1[max_c softmax(z^w_i / T)_c >= tau]``:

* :func:`class_confusion`: MCC's confusion matrix of ``P = softmax(z / T)`` over the selected rows,
  ``C = P^T diag(w) P`` with ``w_i = 1 + exp(-H(p_i))`` (detached; ``H`` with eps 1e-5), each row
  normalised to sum 1. (MCC scales ``w`` to sum to B first; the row normalisation cancels that.)
* :func:`confusion_consistency`: ``L_cc = ||C(z^w.detach()) - C(z^s)||_F^2 / num_classes * (sum_i m_i / B)``
  with the weak view's confusion a fixed target (TLlib detaches the weak logits). No confident row
  gives 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def squared_consistency(p_student: torch.Tensor, p_teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``1/B sum_i m_i ||p_i - q_i||^2`` between two ``(B, C)`` probability matrices (self-ensembling)."""
    d = (p_student - p_teacher).square().sum(dim=1)
    if mask is not None:
        d = d * mask
    return d.mean()


def class_balance_loss(probs: torch.Tensor) -> torch.Tensor:
    """``BCE(mean_i p_i, uniform)`` of a ``(B, C)`` probability matrix (self-ensembling's class balance)."""
    mean = probs.mean(dim=0)
    return F.binary_cross_entropy(mean, torch.full_like(mean, 1.0 / mean.numel()))


def class_confusion(logits: torch.Tensor, temperature: float = 2.5, mask: torch.Tensor | None = None) -> torch.Tensor:
    """MCC's row-normalised, entropy-weighted class confusion ``C = P^T diag(w) P`` of the rows with
    ``mask`` (all rows without one); a class row with no mass (no row selected) is all zeros."""
    p = F.softmax(logits / temperature, dim=1)
    w = (1.0 + torch.exp((p * torch.log(p + 1e-5)).sum(dim=1))).detach()  # 1 + exp(-H(p))
    if mask is not None:
        w = w * mask
    confusion = (p * w.unsqueeze(1)).t() @ p
    rows = confusion.sum(dim=1, keepdim=True)
    return confusion / torch.where(rows > 0, rows, torch.ones_like(rows))


def confusion_consistency(logits_weak: torch.Tensor, logits_strong: torch.Tensor, temperature: float = 2.5,
                          threshold: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """TLlib's CC consistency between the weak and strong views' class confusions (module docstring);
    returns ``(loss, mask)`` with ``mask`` the confident rows (as floats)."""
    b, c = logits_weak.shape
    logits_weak = logits_weak.detach()
    mask = (F.softmax(logits_weak / temperature, dim=1).amax(dim=1) >= threshold).float()
    diff = class_confusion(logits_weak, temperature, mask) - class_confusion(logits_strong, temperature, mask)
    return diff.square().sum() / c * (mask.sum() / b), mask
