"""Transferable Normalization, TransNorm (Wang et al., NeurIPS 2019)."""

from __future__ import annotations

import torch

from lightning_da.norm.base import TwoDomainNorm


class TransNorm(TwoDomainNorm):
    """Domain-specific statistics, shared affine, and a channel-wise transferability gain.

    Training, batch ``[source (n_s); target (n_t)]``:

        z_d = gamma (x_d - mu_d) / sqrt(sigma^2_d + eps) + beta                (per-domain BN, shared gamma, beta)
        dist_c = | mu_s,c / sqrt(sigma^2_s,c + eps) - mu_t,c / sqrt(sigma^2_t,c + eps) |
        alpha_c = C (1 + dist_c)^-1 / sum_k (1 + dist_k)^-1
        y = (1 + alpha) z

    ``alpha`` uses the unbiased batch variances and carries no gradient (as the authors' release);
    channels whose standardised means agree across domains (more transferable) get larger gains. The
    normalisation itself uses the biased variance and the running statistics the unbiased one, like
    BatchNorm. Evaluation: BatchNorm with the target running statistics, times ``1 + alpha`` computed
    from the source and target running statistics. The release assumes equal halves; here the split
    comes from the domain-split contract, so unequal halves also work.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True):
        super().__init__(num_features, eps, momentum, affine)

    def alpha(self, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """Transferability attention from per-domain ``(2, C)`` means and unbiased variances."""
        standardised = mean / torch.sqrt(var + self.eps)
        prob = 1.0 / (1.0 + (standardised[0] - standardised[1]).abs())
        return self.num_features * prob / prob.sum()

    def train_forward(self, x: torch.Tensor, n_source: int) -> torch.Tensor:
        mean, var, unbiased = self.moments(x, n_source)
        self.update_running(mean, unbiased)
        scale, shift = self.scale_shift(mean, var)
        gain = 1.0 + self.alpha(mean, unbiased).detach()
        return self.affine_per_domain(x, n_source, scale * gain, shift * gain)

    def eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        running = (torch.stack([self.running_mean_source, self.running_mean_target]),
                   torch.stack([self.running_var_source, self.running_var_target]))
        gain = 1.0 + self.alpha(*running)
        return super().eval_forward(x) * gain.view(1, -1, *(1,) * (x.ndim - 2)).to(x.dtype)
