"""AFN / HAFN, BSP and MDD losses against slow references and hand-worked examples, with the gradients
the methods depend on (AFN's stop-gradient, BSP's top singular value, MDD's argmax and shift_log)."""

import math

import pytest
import torch

from lightning_da.losses.feature_norm import afn_loss, hafn_loss
from lightning_da.losses.margin import margin_disparity_discrepancy, shift_log
from lightning_da.losses.spectral import batch_spectral_penalty
from lightning_da.models.grl import reverse_grad


# ---------------------------------------------------------------------------- AFN
def test_afn_value_is_delta_squared_and_gradient_grows_each_norm():
    f = torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0]], requires_grad=True)  # norms 5, 2, 1
    delta = 0.3
    loss = afn_loss(f, delta)
    assert loss.item() == pytest.approx(delta ** 2)
    loss.backward()
    # d/df_i of mean_i (sg(r_i) + delta - r_i)^2 = -2 delta f_i / (n r_i): a step along +f_i
    norms = torch.tensor([5.0, 2.0, 1.0])
    expected = -2 * delta * f.detach() / (3 * norms[:, None])
    torch.testing.assert_close(f.grad, expected)


def test_afn_gradient_comes_from_the_stop_gradient():
    """(r + delta - r)^2 without the detach is constant in f; with it the gradient is nonzero."""
    f = torch.randn(4, 5, requires_grad=True)
    (g,) = torch.autograd.grad(afn_loss(f, 1.0), f)
    assert g.abs().sum() > 0
    r = f.norm(dim=1)
    (g_undetached,) = torch.autograd.grad(((r + 1.0 - r) ** 2).mean(), f)
    assert g_undetached.abs().max() < 1e-6


def test_afn_loop_reference():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(6, 7, generator=g, requires_grad=True)
    delta = 0.7
    ref = 0.0
    for row in f:
        r = math.sqrt(sum(v * v for v in row.tolist()))
        ref += (r + delta - row.norm()) ** 2
    ref = ref / len(f)
    torch.testing.assert_close(afn_loss(f, delta), ref)
    torch.testing.assert_close(torch.autograd.grad(afn_loss(f, delta), f)[0], torch.autograd.grad(ref, f)[0])


def test_hafn_hand_worked():
    f = torch.tensor([[3.0, 4.0], [6.0, 8.0]], requires_grad=True)  # norms 5, 10 -> mean 7.5
    loss = hafn_loss(f, radius=10.0)
    assert loss.item() == pytest.approx(2.5 ** 2)
    loss.backward()
    # d/df_i (mean r - R)^2 = 2 (mean r - R) f_i / (n r_i)
    expected = 2 * (7.5 - 10.0) * f.detach() / (2 * torch.tensor([5.0, 10.0])[:, None])
    torch.testing.assert_close(f.grad, expected)


# ---------------------------------------------------------------------------- BSP
def test_bsp_hand_worked_diagonal():
    fs = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # singular values 3, 1
    ft = torch.tensor([[0.0, 2.0], [0.5, 0.0]])  # singular values 2, 0.5
    assert batch_spectral_penalty(fs, ft).item() == pytest.approx(9.0 + 4.0)
    assert batch_spectral_penalty(fs, ft, k=2).item() == pytest.approx(9.0 + 1.0 + 4.0 + 0.25)


def test_bsp_matches_power_iteration_and_its_gradient():
    """sigma_1^2 is the top eigenvalue of F^T F; its gradient is 2 sigma_1 u v^T."""
    g = torch.Generator().manual_seed(1)
    fs = torch.randn(5, 4, generator=g, requires_grad=True)
    ft = torch.randn(7, 4, generator=g, requires_grad=True)
    loss = batch_spectral_penalty(fs, ft)
    gs, gt = torch.autograd.grad(loss, (fs, ft))
    for f, grad in ((fs, gs), (ft, gt)):
        m = (f.T @ f).detach().double()
        v = torch.ones(4, dtype=torch.double)
        for _ in range(500):
            v = m @ v
            v = v / v.norm()
        top = float(v @ m @ v)
        u = f.detach().double() @ v
        torch.testing.assert_close(grad.double(), 2 * torch.outer(u, v), rtol=1e-4, atol=1e-5)
        loss = loss - top
    assert abs(loss.item()) < 1e-4


def test_bsp_rejects_k_zero():
    with pytest.raises(ValueError, match="k"):
        batch_spectral_penalty(torch.randn(3, 2), torch.randn(3, 2), k=0)


# ---------------------------------------------------------------------------- MDD
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
