"""Confidence-thresholded self-training on a strong view (FixMatch, Sohn et al. 2020).

Pseudo labels come from the weak view, ``y_hat = argmax p(weak)``, kept where the confidence
``max p(weak)`` reaches the threshold; the loss is the cross-entropy of the strong view's logits on
them, averaged over the whole batch (masked rows count as zeros):

    L = mean_i 1[max_c p_ic(weak) >= tau] * CE(z_i(strong), y_hat_i)

``strict=True`` uses ``>`` instead of ``>=`` (TLlib's ConfidenceBasedSelfTrainingLoss; the CMKD
code uses ``>=``). Labels and mask carry no gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fixmatch_loss(logits_strong: torch.Tensor, probs_weak: torch.Tensor, threshold: float,
                  strict: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, mask, pseudo_labels)`` of the formula above."""
    confidence, pseudo = probs_weak.detach().max(-1)
    mask = (confidence > threshold) if strict else (confidence >= threshold)
    loss = (F.cross_entropy(logits_strong, pseudo, reduction="none") * mask).mean()
    return loss, mask, pseudo
