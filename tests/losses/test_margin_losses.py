"""MDD's margin disparity discrepancy (losses/margin.py) against a slow reference and hand-worked signs,
with the gradients MDD depends on (its argmax, shift_log, the GRL)."""

import math

import pytest
import torch

from lightning_da.losses.margin import margin_disparity_discrepancy, shift_log
from lightning_da.models.grl import reverse_grad


def slow_mdd(z, z_adv, ns, margin):
    src, tgt = [], []
    for i in range(len(z)):
        h = max(range(z.shape[1]), key=lambda c: z[i, c].item())
        logp = z_adv[i] - torch.logsumexp(z_adv[i], 0)
        if i < ns:
            src.append(-logp[h])
        else:
            p = logp[h].exp()
            tgt.append(-torch.log(torch.clamp(1 - p + 1e-6, max=1.0)))
    ls, lt = sum(src) / len(src), sum(tgt) / len(tgt)
    return margin * ls + lt, ls, lt


def test_mdd_matches_slow_reference_with_unequal_domains():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(9, 4, generator=g, requires_grad=True)
    z_adv = torch.randn(9, 4, generator=g, requires_grad=True)
    got = margin_disparity_discrepancy(z, z_adv, 4, margin=3.0)
    want = slow_mdd(z, z_adv, 4, 3.0)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(got[0], z_adv, retain_graph=True)[0]
    gb = torch.autograd.grad(want[0], z_adv)[0]
    torch.testing.assert_close(ga, gb)
    # the main head's logits get no gradient: the predictions are argmax
    assert torch.autograd.grad(got[0], z, allow_unused=True)[0] is None


def test_mdd_hand_worked_signs():
    # main head predicts class 0 on both rows; adversarial head uniform over 2 classes
    z = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    z_adv = torch.zeros(2, 2)
    loss, ls, lt = margin_disparity_discrepancy(z, z_adv, 1, margin=4.0)
    assert ls.item() == pytest.approx(math.log(2))  # CE of uniform
    assert lt.item() == pytest.approx(-math.log(0.5 + 1e-6))  # -log(1 - 1/2)
    assert loss.item() == pytest.approx(4 * math.log(2) - math.log(0.5 + 1e-6))


def test_shift_log_is_finite_at_certainty():
    assert shift_log(torch.tensor(0.0)).item() == pytest.approx(math.log(1e-6))
    assert shift_log(torch.tensor(1.0)).item() == 0.0  # clamped at 1, never positive


def test_mdd_gradient_through_a_grl_reaches_features_reversed():
    """F' minimises L_MDD; the features, behind the GRL, get -coeff times its gradient."""
    g = torch.Generator().manual_seed(3)
    f = torch.randn(6, 3, generator=g, requires_grad=True)
    w = torch.randn(3, 4, generator=g, requires_grad=True)
    z = torch.randn(6, 4, generator=g)
    coeff = 0.1
    loss_rev = margin_disparity_discrepancy(z, reverse_grad(f, coeff) @ w, 3)[0]
    loss_plain = margin_disparity_discrepancy(z, f @ w, 3)[0]
    g_rev, gw_rev = torch.autograd.grad(loss_rev, (f, w))
    g_plain, gw_plain = torch.autograd.grad(loss_plain, (f, w))
    torch.testing.assert_close(g_rev, -coeff * g_plain)
    torch.testing.assert_close(gw_rev, gw_plain)
