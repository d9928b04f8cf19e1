"""Margin disparity discrepancy (Zhang et al., "Bridging Theory and Algorithm for Domain Adaptation",
ICML 2019), for classification, as TLlib's ``ClassificationMarginDisparityDiscrepancy``.

With the main head's logits ``z`` (predictions ``h = argmax z``, no gradient) and the adversarial
head's logits ``z'`` (``p' = softmax(z')``), on ``[source; target]`` rows:

    D_gamma = -gamma * mean_s CE(z'_s, h_s) + mean_t log(1 - p'_t[h_t])

:func:`margin_disparity_discrepancy` returns the quantity the training *minimises*,

    L_MDD = -D_gamma = gamma * mean_s CE(z'_s, h_s) - mean_t log(1 - p'_t[h_t])

The adversarial head F' minimises it directly (agree with F on the source, disagree on the target, i.e.
maximise D); the feature extractor sits behind a gradient reversal layer, so it minimises D.
``log(1 - p)`` is TLlib's ``shift_log``: ``log(min(1 - p + 1e-6, 1))``, finite when ``p -> 1``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shift_log(x: torch.Tensor, offset: float = 1e-6) -> torch.Tensor:
    """``log(min(x + offset, 1))``: finite for ``x = 0`` and never positive."""
    return torch.log(torch.clamp(x + offset, max=1.0))


def margin_disparity_discrepancy(logits: torch.Tensor, adv_logits: torch.Tensor, n_source: int,
                                 margin: float = 4.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``L_MDD = margin * L_s + L_t`` on ``[source; target]`` logits of the main and adversarial heads.

    Returns ``(L_MDD, L_s, L_t)`` with ``L_s = mean_s CE(z'_s, argmax z_s)`` and
    ``L_t = -mean_t log(1 - softmax(z'_t)[argmax z_t])``. Source and target are averaged separately
    (TLlib averages their elementwise sum, the same for equal batch sizes).
    """
    pred = logits.detach().argmax(dim=1)
    loss_s = F.cross_entropy(adv_logits[:n_source], pred[:n_source])
    p_t = F.softmax(adv_logits[n_source:], dim=1)
    loss_t = -shift_log(1.0 - p_t.gather(1, pred[n_source:, None]).squeeze(1)).mean()
    return margin * loss_s + loss_t, loss_s, loss_t
