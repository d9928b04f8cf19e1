"""Adaptive feature norm losses (Xu et al., "Larger Norm More Transferable: An Adaptive Feature Norm
Approach for Unsupervised Domain Adaptation", ICCV 2019).

* SAFN, the stepwise adaptive feature norm (:func:`afn_loss`), per domain:

      L_SAFN(f) = mean_i ( sg(||f_i||_2) + delta_r - ||f_i||_2 )^2

  ``sg`` is stop-gradient: the target norm is each sample's *current* norm plus ``delta_r``, so the
  value is always ``delta_r^2`` while the gradient, ``-2 delta_r f_i / ||f_i||``, pushes every norm up
  by a step of about ``delta_r`` per update (TLlib's ``AdaptiveFeatureNorm``; delta_r = 1 in the paper).
* HAFN, the hard variant (:func:`hafn_loss`), per domain, towards a fixed radius R:

      L_HAFN(f) = ( mean_i ||f_i||_2 - R )^2

  the domain's *mean* norm against R, as the paper's Eq. and the official code
  (``get_L2norm_loss_self_driven``, R = 25) compute it.

A method sums the two domains' terms, ``L(f_s) + L(f_t)``, as TLlib and the official code do.
"""

from __future__ import annotations

import torch


def afn_loss(features: torch.Tensor, delta: float = 1.0) -> torch.Tensor:
    """SAFN on one domain's features ``(N, d)``: ``mean_i (sg(||f_i||) + delta - ||f_i||)^2``."""
    norms = features.norm(p=2, dim=1)
    return ((norms.detach() + delta - norms) ** 2).mean()


def hafn_loss(features: torch.Tensor, radius: float = 25.0) -> torch.Tensor:
    """HAFN on one domain's features ``(N, d)``: ``(mean_i ||f_i|| - R)^2``."""
    return (features.norm(p=2, dim=1).mean() - radius) ** 2
