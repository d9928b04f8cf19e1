"""Gradient reversal and its coefficient schedules.

The gradient reversal layer (GRL, Ganin & Lempitsky 2015) is the identity in the forward pass and
multiplies the gradient by ``-coeff`` in the backward pass.

All schedules used by the seed methods have the same sigmoid shape

    coeff(i) = (hi - lo) * (2 / (1 + exp(-alpha * i / max_iters)) - 1) + lo

* DANN: ``i / max_iters`` is the training progress p in [0, 1], alpha = 10.
* RN / CDAN ``calc_coeff``: alpha = 10, max_iters = 10000 (iterations).
* Warm-start GRL (SDAT / M2CAN): alpha = 1, max_iters = 1000, and the layer steps its own counter
  every time it is called (``auto_step=True``).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.coeff * grad, None


def reverse_grad(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    """Identity forward; gradient multiplied by ``-coeff`` backward."""
    return _ReverseGrad.apply(x, float(coeff))


def grl_coefficient(step: float, max_iters: float, alpha: float = 10.0, lo: float = 0.0, hi: float = 1.0) -> float:
    """``(hi - lo) * (2 / (1 + exp(-alpha * step / max_iters)) - 1) + lo`` (0 at step 0, -> hi)."""
    p = step / max(max_iters, 1)
    return float((hi - lo) * (2.0 / (1.0 + math.exp(-alpha * p)) - 1.0) + lo)


class GradientReversal(nn.Module):
    """GRL whose coefficient follows :func:`grl_coefficient`.

    The owner sets ``step`` (e.g. from ``trainer.global_step``) before each forward, or
    ``auto_step=True`` makes the layer count its own calls in training mode (warm-start GRL).
    A fixed coefficient is ``alpha=None`` with ``hi`` as the value.
    """

    def __init__(self, alpha: float | None = 10.0, max_iters: float = 1000, lo: float = 0.0, hi: float = 1.0,
                 auto_step: bool = False):
        super().__init__()
        self.alpha, self.max_iters, self.lo, self.hi, self.auto_step = alpha, max_iters, lo, hi, auto_step
        self.step = 0

    @property
    def coeff(self) -> float:
        if self.alpha is None:
            return float(self.hi)
        return grl_coefficient(self.step, self.max_iters, self.alpha, self.lo, self.hi)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = reverse_grad(x, self.coeff)
        if self.auto_step and self.training:
            self.step += 1
        return out

    def get_extra_state(self) -> dict:
        return {"step": self.step, "max_iters": self.max_iters}

    def set_extra_state(self, state: dict) -> None:
        self.step, self.max_iters = state["step"], state["max_iters"]

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, max_iters={self.max_iters}, lo={self.lo}, hi={self.hi}, auto_step={self.auto_step}"
