"""CMKD's losses (Zhou & Zhou, TCSVT 2024): Gini impurity, the agreement weight, the lambda ramp.

Gini impurity of soft predictions ``p`` (B x C) with per-sample weights ``w``:

* ``form="code"`` (the CMKD code, default): class-balanced and summed over the batch,
  ``GI(p; w) = sum_i w_i (1 - sum_c p_ic^2 / N_c)`` with ``N_c = sum_i p_ic`` (detached), the
  soft mass of class c in the batch;
* ``form="paper"`` (eq. 4): ``GI(p; w) = mean_i w_i (1 - sum_c p_ic^2)``.

Agreement weight between the student ``p_h`` and the zero-shot view ``p_g`` (detached):
``alpha = exp(-KL(p_g || p_h))`` in the code (``F.kl_div(log p_h, p_g)``); the paper's eq. 11
writes ``exp(-KL(p_h || p_g))`` (``direction="paper"``).

Ramp: ``lamb_t = 2 / (1 + exp(-gamma * min(t, T) / T)) - 1``, ``gamma = 1``, ``T = 10000`` in the code
(so lamb rises from 0 to about 0.462).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gini_impurity(p: torch.Tensor, weight: torch.Tensor | float = 1.0, form: str = "code") -> torch.Tensor:
    if form == "code":
        mass = p.sum(0, keepdim=True).detach()
        return (weight * (1.0 - (p.pow(2) / mass).sum(-1))).sum()
    if form == "paper":
        return (weight * (1.0 - p.pow(2).sum(-1))).mean()
    raise ValueError(f"gini form must be 'code' or 'paper', not {form!r}")


def agreement_weight(logits_student: torch.Tensor, logits_zero_shot: torch.Tensor, direction: str = "code") -> torch.Tensor:
    """Per-sample ``alpha = exp(-KL)`` between the two predictions, detached."""
    log_h, log_g = F.log_softmax(logits_student, -1), F.log_softmax(logits_zero_shot, -1)
    if direction == "code":  # KL(p_g || p_h)
        kl = (log_g.exp() * (log_g - log_h)).sum(-1)
    elif direction == "paper":  # KL(p_h || p_g)
        kl = (log_h.exp() * (log_h - log_g)).sum(-1)
    else:
        raise ValueError(f"alpha direction must be 'code' or 'paper', not {direction!r}")
    return torch.exp(-kl).detach()


def sigmoid_ramp(step: int, gamma: float = 1.0, max_iter: int = 10000) -> float:
    p = min(step, max_iter) / max_iter
    return 2.0 / (1.0 + math.exp(-gamma * p)) - 1.0
