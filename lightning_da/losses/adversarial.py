"""Domain-adversarial losses (DANN, CDAN, CDAN+E).

Convention: the discriminator outputs a logit, source is label 1 and target label 0; gradient
reversal is applied by the caller (``models.grl``) to the discriminator's input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_da.losses.entropy import entropy
from lightning_da.models.grl import reverse_grad


def dann_loss(d_source: torch.Tensor, d_target: torch.Tensor) -> torch.Tensor:
    """DANN domain loss on discriminator logits, averaged per domain then over the two domains:

        L_D = 1/2 [ mean_i BCE(d_s,i, 1) + mean_j BCE(d_t,j, 0) ]
    """
    ls = F.binary_cross_entropy_with_logits(d_source, torch.ones_like(d_source))
    lt = F.binary_cross_entropy_with_logits(d_target, torch.zeros_like(d_target))
    return 0.5 * (ls + lt)


def multilinear_map(features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """CDAN's conditioning ``T(f, g) = g (outer) f`` flattened to ``C * d`` per row."""
    return torch.bmm(probs.unsqueeze(2), features.unsqueeze(1)).flatten(1)


def entropy_weights(logits: torch.Tensor, n_source: int, grl_coeff: float) -> torch.Tensor:
    """CDAN+E sample weights ``w = 1 + exp(-H(p))``, normalised to sum 1 within source and within
    target and then by their total; the gradient through H is reversed and scaled by ``grl_coeff``
    (the original code's hook on the entropy), so the classifier is trained adversarially through it.
    """
    h = reverse_grad(entropy(logits, reduction="none"), grl_coeff)
    w = 1.0 + torch.exp(-h)
    ws, wt = w[:n_source], w[n_source:]
    w = torch.cat([ws / ws.sum().detach(), wt / wt.sum().detach()])
    return w / w.sum().detach()


def cdan_loss(d_logits: torch.Tensor, n_source: int, weights: torch.Tensor | None = None) -> torch.Tensor:
    """CDAN domain loss on discriminator logits of ``[source; target]`` rows (source = 1):

    * CDAN:   ``mean_i BCE(d_i, y_i)``
    * CDAN+E: ``sum_i w_i BCE(d_i, y_i) / sum_i w_i`` with ``w`` from :func:`entropy_weights`
      (the denominator is a constant).
    """
    labels = torch.zeros_like(d_logits)
    labels[:n_source] = 1.0
    if weights is None:
        return F.binary_cross_entropy_with_logits(d_logits, labels)
    bce = F.binary_cross_entropy_with_logits(d_logits, labels, reduction="none")
    return (weights * bce).sum() / weights.sum().detach()
