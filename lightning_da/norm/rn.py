"""Reciprocal Normalization, RN (Huang et al., arXiv 2112.10474), as in the authors' code."""

from __future__ import annotations

import torch
from torch import nn

from lightning_da.norm.base import DomainSplitError, TwoDomainNorm

DISTANCES = ("l2", "l1", "cosine")


class ReciprocalNorm(TwoDomainNorm):
    """RN: per-domain statistics, each compensated by the other domain's (RC) through learned gates (RA).

    Training, batch ``[source (b); target (b)]`` (equal halves are required). Per domain and channel,
    ``mu_s, var_s, mu_t, var_t`` over (N, spatial), with the **unbiased** variance. Channels are
    grouped: ``G = 1 if C < 512 else C // 512``, and each statistic ``(C,)`` is viewed as ``(C/G, G)``
    (row r = channels rG .. rG+G-1); distances use the row means ``m``.

    Reciprocal compensation (``distance="l2"``, no temperature)::

        A_{s<-t}[i, j] = softmax_j(-(m_s[i] - m_t[j])^2),   A_{t<-s}[i, j] = softmax_j(-(m_t[i] - m_s[j])^2)
        mu_{s<-t} = A_{s<-t} mu_t,  mu_{t<-s} = A_{t<-s} mu_s     (and the same for the variances)

    ``l1`` uses ``-|m_s[i] - m_t[j]|``; ``cosine`` the product ``m_s[i] m_t[j]``; like the original,
    these two only exist for ungrouped layers (C < 1024), and a grouped layer refuses them.

    Reciprocal aggregation with per-channel gates ``lambda`` (initialised to 1 = domain-specific BN,
    clamped to [0.5, 1] after every optimiser step by :meth:`clamp_gates`)::

        mu^_s = lambda^mu_s mu_s + (1 - lambda^mu_s) mu_{s<-t},   var^_s likewise, target likewise
        y_d = gamma (x_d - mu^_d) / sqrt(var^_d + eps) + beta      (gamma, beta shared)

    Running statistics: EMA (momentum 0.1) of the aggregated ``mu^, var^`` per domain. Evaluation:
    BatchNorm with the **target** running statistics (the source ones are never used).
    ``from_batchnorm`` / loading a BN state dict fills both statistic sets and the shared affine.
    """

    GATES = ("gate_mean_source", "gate_var_source", "gate_mean_target", "gate_var_target")
    GATE_RANGE = (0.5, 1.0)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 distance: str = "l2"):
        super().__init__(num_features, eps, momentum, affine)
        if distance not in DISTANCES:
            raise ValueError(f"unknown RN distance {distance!r}; choose one of {list(DISTANCES)}")
        self.groups = 1 if num_features < 512 else num_features // 512
        if num_features % self.groups:
            raise ValueError(f"RN groups {num_features} channels into rows of {self.groups} (C // 512), which does "
                             "not divide C; the original reshape fails for this width too")
        if distance != "l2" and self.groups > 1:
            raise ValueError(f"RN distance {distance!r} only applies to layers with fewer than 1024 channels "
                             f"(this one has {num_features}, grouped by {self.groups}); use distance=l2")
        self.distance = distance
        for name in self.GATES:
            setattr(self, name, nn.Parameter(torch.ones(num_features)))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, distance={self.distance}, groups={self.groups}"

    def gate_parameters(self) -> list[nn.Parameter]:
        return [getattr(self, name) for name in self.GATES]

    @torch.no_grad()
    def clamp_gates(self) -> None:
        for gate in self.gate_parameters():
            gate.clamp_(*self.GATE_RANGE)

    def compensate(self, stat: torch.Tensor) -> torch.Tensor:
        """Reciprocal compensation of a per-domain statistic ``(2, C)``: row 0 is ``A_{s<-t} stat_t``,
        row 1 is ``A_{t<-s} stat_s``."""
        rows = stat.view(2, -1, self.groups)                 # (2, C/G, G)
        m_s, m_t = rows.mean(-1)                             # (C/G,) each
        if self.distance == "l2":
            logits = -(m_s[:, None] - m_t[None, :]).square()  # [i, j]: source row i vs target row j
        elif self.distance == "l1":
            logits = -(m_s[:, None] - m_t[None, :]).abs()
        else:
            logits = m_s[:, None] * m_t[None, :]
        from_target = torch.softmax(logits, dim=1) @ rows[1]  # A_{s<-t} stat_t
        from_source = torch.softmax(logits.t(), dim=1) @ rows[0]  # A_{t<-s} stat_s
        return torch.stack([from_target, from_source]).view(2, -1)

    def train_forward(self, x: torch.Tensor, n_source: int) -> torch.Tensor:
        if 2 * n_source != len(x):
            raise DomainSplitError(f"ReciprocalNorm needs equal source and target halves, got {n_source} source rows "
                                   f"in a batch of {len(x)}; use equal batch sizes with drop_last (data.target_batch_size)")
        mean, _, var = self.moments(x, n_source)             # unbiased variance, as the original
        gate_mean = torch.stack([self.gate_mean_source, self.gate_mean_target])
        gate_var = torch.stack([self.gate_var_source, self.gate_var_target])
        mean = gate_mean * mean + (1 - gate_mean) * self.compensate(mean)
        var = gate_var * var + (1 - gate_var) * self.compensate(var)
        self.update_running(mean.detach(), var.detach())
        return self.affine_per_domain(x, n_source, *self.scale_shift(mean, var))
