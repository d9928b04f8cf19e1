"""Statistic-matching losses between source and target batches: MK-MMD (DAN), JMMD (JAN), CORAL.

Kernels (TLlib's ``GaussianKernel``). On the concatenated batch ``z = [z_s; z_t]`` (N rows) with
squared distances ``D_ij = ||z_i - z_j||^2``:

* bandwidth multiples (``alphas``): ``k(z_i, z_j) = sum_a exp(-D_ij / (2 a * mean(D)))``, the
  mean over all N^2 entries (diagonal included), taken as a constant (no gradient through it);
* a fixed width (``sigma``): ``k(z_i, z_j) = exp(-D_ij / (2 sigma^2))``.

Estimates of ``MMD^2 = E k(s, s') + E k(t, t') - 2 E k(s, t)`` from the kernel matrix K:

* ``unbiased`` (quadratic; TLlib's ``linear=False``): the within-domain means leave out the diagonal,
  ``1/(n_s(n_s-1)) sum_{i!=j} K_ss + 1/(n_t(n_t-1)) sum_{i!=j} K_tt - 2/(n_s n_t) sum_ij K_st``;
* ``biased`` (quadratic, the V-statistic): ``mean K_ss + mean K_tt - 2 mean K_st``;
* ``linear`` (TLlib's linear-time form, equal batch sizes n): the mean over i of
  ``K(s_i, s_i+1) + K(t_i, t_i+1) - K(s_i, t_i+1) - K(s_i+1, t_i)`` with i+1 taken mod n (TLlib
  uses these n cyclic pairs; DAN's paper, eq. 6, uses the n/2 disjoint quad-tuples instead).

``offset=True`` adds TLlib's constant ``2 / (n_s - 1)`` (its "make up for the diagonal"; it has no
gradient, so it changes the logged value only).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from lightning_da.models.grl import reverse_grad

#: TLlib's DAN / JAN feature kernels: bandwidths 2^k * mean distance for k = -3..1
DEFAULT_ALPHAS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0)
ESTIMATORS = ("unbiased", "biased", "linear")


def squared_distances(z: torch.Tensor) -> torch.Tensor:
    """``D_ij = ||z_i - z_j||^2`` for the rows of ``z`` (flattened to 2-D), clamped at 0."""
    z = z.flatten(1)
    sq = (z * z).sum(1)
    return (sq[:, None] + sq[None, :] - 2.0 * z @ z.t()).clamp_min(0.0)


def gaussian_kernel_matrix(z: torch.Tensor, alphas: Sequence[float] | None = None,
                           sigma: float | None = None) -> torch.Tensor:
    """Sum of Gaussian kernels on the rows of ``z``: widths ``2 a mean(D)`` for each ``a`` in
    ``alphas`` (mean of the detached distances), or the one fixed width ``2 sigma^2``."""
    d = squared_distances(z)
    if sigma is not None:
        if alphas is not None:
            raise ValueError("give a kernel either alphas (bandwidth multiples) or a fixed sigma, not both")
        return torch.exp(-d / (2.0 * sigma * sigma))
    mean = d.detach().mean()
    return sum(torch.exp(-d / (2.0 * a * mean)) for a in (alphas or DEFAULT_ALPHAS))


def mmd_from_kernel(k: torch.Tensor, n_source: int, estimator: str = "unbiased", offset: bool = False) -> torch.Tensor:
    """The MMD^2 estimate (module docstring) from the kernel matrix of ``[source; target]`` rows."""
    ns, nt = n_source, k.shape[0] - n_source
    if estimator == "linear":
        if ns != nt:
            raise ValueError(f"the linear-time MMD pairs source and target rows: it needs equal batch sizes, got {ns} and {nt}")
        i = torch.arange(ns, device=k.device)
        j = (i + 1) % ns
        loss = (k[i, j] + k[ns + i, ns + j] - k[i, ns + j] - k[j, ns + i]).mean()
    elif estimator == "unbiased":
        if ns < 2 or nt < 2:
            raise ValueError("the unbiased MMD needs at least 2 rows per domain")
        k_ss, k_tt = k[:ns, :ns], k[ns:, ns:]
        loss = ((k_ss.sum() - k_ss.diagonal().sum()) / (ns * (ns - 1))
                + (k_tt.sum() - k_tt.diagonal().sum()) / (nt * (nt - 1)) - 2.0 * k[:ns, ns:].mean())
    elif estimator == "biased":
        loss = k[:ns, :ns].mean() + k[ns:, ns:].mean() - 2.0 * k[:ns, ns:].mean()
    else:
        raise ValueError(f"unknown MMD estimator {estimator!r}; choose one of {ESTIMATORS}")
    return loss + 2.0 / (ns - 1) if offset else loss


def mk_mmd(z_s: torch.Tensor, z_t: torch.Tensor, alphas: Sequence[float] = DEFAULT_ALPHAS,
           estimator: str = "linear", offset: bool = True) -> torch.Tensor:
    """Multi-kernel MMD of DAN (Long et al., "Learning Transferable Features with Deep Adaptation
    Networks", ICML 2015):

        d_k^2(P, Q) = || E_P phi(z_s) - E_Q phi(z_t) ||^2_Hk,   k = sum_a k_a

    with the Gaussian kernels ``k_a`` at widths ``2 a mean(D)`` and equal weights (TLlib's choice; the
    paper learns the kernel weights beta by a QP). Defaults are TLlib's DAN: ``alphas`` 2^-3..2^1,
    the linear-time estimate, and its constant offset.
    """
    k = gaussian_kernel_matrix(torch.cat([z_s, z_t]), alphas=alphas)
    return mmd_from_kernel(k, len(z_s), estimator, offset)


def jmmd(z_s: Sequence[torch.Tensor], z_t: Sequence[torch.Tensor], kernels: Sequence[dict],
         estimator: str = "unbiased", offset: bool = True) -> torch.Tensor:
    """Joint MMD of JAN (Long et al., "Deep Transfer Learning with Joint Adaptation Networks",
    ICML 2017): the MMD with the product kernel over the layers l,

        D_L(P, Q) = || E_P[ (x)_l phi_l(z_s^l) ] - E_Q[ (x)_l phi_l(z_t^l) ] ||^2,
        K_ij = prod_l k_l(z_i^l, z_j^l),

    each ``k_l`` given by ``kernels[l]`` as ``{"alphas": [...]}`` (a sum of Gaussians at multiples of
    the mean distance) or ``{"sigma": s}`` (one fixed Gaussian). TLlib's JAN: features with alphas
    2^-3..2^1, the softmax outputs with sigma 0.92, the quadratic (unbiased) estimate and its offset.
    """
    if not (len(z_s) == len(z_t) == len(kernels)):
        raise ValueError("jmmd needs one source tensor, one target tensor and one kernel per layer")
    k = None
    for zs, zt, spec in zip(z_s, z_t, kernels):
        unknown = sorted(set(spec) - {"alphas", "sigma"})
        if unknown:
            raise ValueError(f"unknown kernel option(s) {unknown}: a kernel takes alphas or sigma")
        k_l = gaussian_kernel_matrix(torch.cat([zs, zt]), alphas=spec.get("alphas"), sigma=spec.get("sigma"))
        k = k_l if k is None else k * k_l
    return mmd_from_kernel(k, len(z_s[0]), estimator, offset)


def covariance(x: torch.Tensor) -> torch.Tensor:
    """``C = 1/(n-1) (X^T X - 1/n (1^T X)^T (1^T X))``, the unbiased covariance of the rows of X."""
    xc = x - x.mean(0, keepdim=True)
    return xc.t() @ xc / (len(x) - 1)


def coral_loss(f_s: torch.Tensor, f_t: torch.Tensor, form: str = "paper") -> torch.Tensor:
    """CORAL loss of Deep CORAL (Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain
    Adaptation", ECCV 2016 workshops), on d-dimensional activations:

        l_CORAL = || C_S - C_T ||_F^2 / (4 d^2)                         (form="paper", eq. 1)

    ``form="tllib"`` is TLlib's ``CorrelationAlignmentLoss`` (its domain-generalisation CORAL),
    which drops the 1/4 and adds the mean difference:
    ``mean_k (mu_S - mu_T)_k^2 + mean_kl (C_S - C_T)_kl^2``.
    """
    c_s, c_t = covariance(f_s), covariance(f_t)
    d = f_s.shape[1]
    if form == "paper":
        return (c_s - c_t).pow(2).sum() / (4.0 * d * d)
    if form == "tllib":
        return (f_s.mean(0) - f_t.mean(0)).pow(2).mean() + (c_s - c_t).pow(2).mean()
    raise ValueError(f"unknown CORAL form {form!r}; choose paper or tllib")


class AdversarialTheta(nn.Module):
    """JAN-A's adversarial map theta (TLlib's ``Theta``): ``R(W R(z) + b)`` with R a gradient
    reversal at coefficient 1 and ``W = I, b = 0`` at the start. The forward is the affine map; the
    gradient reaching ``W, b`` is reversed (theta *maximises* the JMMD), the one reaching ``z`` is
    reversed twice (the network still minimises it)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.eye_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return reverse_grad(self.linear(reverse_grad(z, 1.0)), 1.0)
