"""FixMatch's loss (losses/self_training.py): the mask, its threshold and the gradients."""

import pytest
import torch
import torch.nn.functional as F

from lightning_da.losses import fixmatch_loss


def test_fixmatch_loss_mask_and_threshold():
    probs = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.05, 0.95], [0.3, 0.7]])
    logits = torch.randn(4, 2, requires_grad=True)
    loss, mask, pseudo = fixmatch_loss(logits, probs, threshold=0.9)
    assert mask.tolist() == [True, False, True, False] and pseudo.tolist() == [0, 0, 1, 1]
    ce = [F.cross_entropy(logits[i:i + 1], pseudo[i:i + 1]).item() for i in range(4)]
    assert loss.item() == pytest.approx((ce[0] + ce[2]) / 4)  # averaged over the whole batch
    _, strict_mask, _ = fixmatch_loss(logits, probs, threshold=0.9, strict=True)
    assert strict_mask.tolist() == [False, False, True, False]  # 0.9 is not > 0.9
    loss.backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[3].abs().sum() == 0  # masked rows get no gradient
    p = probs.clone().requires_grad_(True)
    fixmatch_loss(logits.detach().requires_grad_(True), p, 0.5)[0].backward()
    assert p.grad is None  # labels and mask carry no gradient
