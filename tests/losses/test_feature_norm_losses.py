"""AFN / HAFN losses (losses/feature_norm.py) against loop references and hand-worked examples, with the
gradient AFN depends on (its stop-gradient)."""

import math

import pytest
import torch

from lightning_da.losses.feature_norm import afn_loss, hafn_loss


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
