"""SHOT's target loss (losses/shot.py) against a slow reference with gradients, and its IM part."""

import pytest
import torch

from lightning_da.losses.entropy import information_maximization
from lightning_da.losses.shot import shot_target_loss


EPS = 1e-5


def slow_shot_loss(logits, labels, ent_par, gent, cls_par):
    """Per-element loops over the formula."""
    b, c = logits.shape
    probs = [torch.softmax(logits[i], 0) for i in range(b)]
    h = [-sum(p[k] * torch.log(p[k] + EPS) for k in range(c)) for p in probs]
    cond = sum(h) / b
    pm = [sum(p[k] for p in probs) / b for k in range(c)]
    div = -sum(pm[k] * torch.log(pm[k] + EPS) for k in range(c))
    ce = sum(-torch.log(probs[i][labels[i]]) for i in range(b)) / b
    return ent_par * (cond - gent * div) + cls_par * ce, cond, div, ce


def test_loss_matches_slow_reference_with_gradients():
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(6, 4, generator=g) * 2).requires_grad_()
    y = torch.tensor([0, 3, 1, 1, 2, 0])
    loss, terms = shot_target_loss(z, y, ent_par=0.7, gent=0.6, cls_par=0.3)
    z2 = z.detach().clone().requires_grad_()
    ref, cond, div, ce = slow_shot_loss(z2, y, 0.7, 0.6, 0.3)
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(terms["entropy"], cond)
    torch.testing.assert_close(terms["diversity"], div)
    torch.testing.assert_close(terms["pseudo"], ce)
    torch.testing.assert_close(terms["im"], cond - 0.6 * div)
    (gz,) = torch.autograd.grad(loss, z)
    (gr,) = torch.autograd.grad(ref, z2)
    torch.testing.assert_close(gz, gr)


def test_loss_im_part_is_the_library_information_maximization_and_shot_im_needs_no_labels():
    z = torch.randn(5, 3)
    loss, terms = shot_target_loss(z, None, ent_par=1.0, gent=1.0, cls_par=0.0)
    torch.testing.assert_close(loss, information_maximization(z, eps=EPS))
    assert "pseudo" not in terms
    with pytest.raises(ValueError, match="pseudo labels"):
        shot_target_loss(z, None, cls_par=0.1)
