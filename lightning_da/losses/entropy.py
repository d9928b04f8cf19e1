"""Entropy of predictions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def entropy(logits: torch.Tensor, reduction: str = "mean", eps: float = 1e-5) -> torch.Tensor:
    """Shannon entropy ``H(p_i) = -sum_c p_ic log(p_ic + eps)`` of ``p = softmax(logits)`` per row.

    ``reduction``: ``"none"`` (one value per row) or ``"mean"``.
    """
    p = F.softmax(logits, dim=1)
    h = -(p * torch.log(p + eps)).sum(dim=1)
    return h.mean() if reduction == "mean" else h
