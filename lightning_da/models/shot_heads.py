"""SHOT's weight-normalised classifier (Liang et al., ICML 2020, the source "hypothesis").

Weight normalisation (Salimans & Kingma, 2016) over each class row: with a direction ``v_k`` and a
length ``g_k`` per class k,

    z = W f + b,    W_k = g_k * v_k / ||v_k||_2

so the classifier's parameters are ``weight_g`` (C, 1), ``weight_v`` (C, D) and ``bias`` (C,): the
names of ``torch.nn.utils.weight_norm(nn.Linear(D, C))``, which the SHOT code uses (``feat_classifier``
with ``type="wn"``), so its checkpoints' keys match.

Initialisation, as the SHOT code ends up with: ``v`` keeps ``nn.Linear``'s default (Kaiming-uniform),
``g_k = ||v_k||`` (so W starts equal to that default weight) and the bias is zero. SHOT calls
``xavier_normal_`` on the module's ``weight`` after weight normalisation, but that tensor is the
one recomputed from ``g`` and ``v`` before every forward, so the call has no effect; its
``zeros_(bias)`` does act.
"""

from __future__ import annotations

import torch
from torch import nn


class WeightNormClassifier(nn.Module):
    """``Linear(in_features, num_classes)`` with per-class weight normalisation (see the module doc)."""

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        linear = nn.Linear(in_features, num_classes)  # PyTorch's default init of the direction
        self.in_features, self.out_features = in_features, num_classes
        self.weight_v = nn.Parameter(linear.weight.detach().clone())
        self.weight_g = nn.Parameter(self.weight_v.detach().norm(dim=1, keepdim=True))
        self.bias = nn.Parameter(torch.zeros(num_classes))

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight ``W = g * v / ||v||`` (rows)."""
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=1, keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight_norm=dim0"
