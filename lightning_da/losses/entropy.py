"""Entropy of predictions: per-row entropy and information maximisation."""

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


def information_maximization(logits: torch.Tensor, eps: float = 1e-5, shift_marginal: bool = False) -> torch.Tensor:
    """Information maximisation, conditional minus marginal entropy of ``p = softmax(logits)``:

        IM = mean_i H(p_i) + sum_c p̄_c log(p̄_c + eps),     p̄ = mean_i p_i

    (minimising it gives confident and diverse predictions; SHOT, Liang et al. 2020).
    ``shift_marginal=True`` is CGDM's released form, ``... + sum_c (p̄_c + eps) log(p̄_c + eps)``.
    """
    p_mean = F.softmax(logits, dim=1).mean(0)
    weight = p_mean + eps if shift_marginal else p_mean
    return entropy(logits, eps=eps) + (weight * torch.log(p_mean + eps)).sum()
