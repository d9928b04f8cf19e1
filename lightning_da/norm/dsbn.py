"""Domain-Specific Batch Normalization (Chang et al., CVPR 2019)."""

from __future__ import annotations

import torch

from lightning_da.norm.base import TwoDomainNorm


class DSBN(TwoDomainNorm):
    """BatchNorm with separate statistics (and, by default, separate affine) per domain.

    Training, with ``[source (n_s); target (n_t)]`` declared by the domain split: each half is
    normalised with its own batch statistics, exactly as a BatchNorm that only sees that half,

        y_d = gamma_d (x_d - mu_d) / sqrt(sigma^2_d + eps) + beta_d,   d in {source, target}

    (biased variance for normalising, unbiased for the running statistics, like BatchNorm). Evaluation
    uses the target running statistics and the target affine. ``shared_affine=True`` shares gamma, beta
    between the domains (statistics-only DSBN). Several source domains share the source branch (the
    paper keeps one branch per domain; our multi-source batches mark only where the target starts).
    Unequal halves are fine.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 shared_affine: bool = False):
        super().__init__(num_features, eps, momentum, affine, per_domain_affine=not shared_affine)
        self.shared_affine = shared_affine

    def train_forward(self, x: torch.Tensor, n_source: int) -> torch.Tensor:
        mean, var, unbiased = self.moments(x, n_source)
        self.update_running(mean, unbiased)
        return self.affine_per_domain(x, n_source, *self.scale_shift(mean, var))
