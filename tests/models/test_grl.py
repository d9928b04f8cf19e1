import math

import pytest
import torch

from lightning_da.models.grl import GradientReversal, grl_coefficient, reverse_grad


def test_reverse_grad_is_identity_forward_and_negated_scaled_backward():
    x = torch.randn(5, 3, requires_grad=True)
    y = reverse_grad(x, 0.3)
    assert torch.equal(y, x)
    w = torch.randn(5, 3)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, -0.3 * w)


@pytest.mark.parametrize("step,max_iters,alpha", [(0, 100, 10.0), (50, 100, 10.0), (100, 100, 10.0), (250, 1000, 1.0), (3000, 10000, 10.0)])
def test_schedule_matches_dann_formula(step, max_iters, alpha):
    p = step / max_iters
    expected = 2.0 / (1.0 + math.exp(-alpha * p)) - 1.0
    assert grl_coefficient(step, max_iters, alpha) == pytest.approx(expected)


def test_schedule_values_and_range():
    assert grl_coefficient(0, 100) == 0.0
    assert grl_coefficient(100, 100) == pytest.approx(0.9999092, abs=1e-6)  # 2/(1+e^-10)-1
    assert grl_coefficient(5000, 10000, alpha=10, lo=0.0, hi=0.5) == pytest.approx(0.5 * (2 / (1 + math.exp(-5)) - 1))
    values = [grl_coefficient(i, 1000) for i in range(0, 1001, 100)]
    assert values == sorted(values) and values[-1] < 1.0


def test_layer_uses_step_and_auto_step():
    layer = GradientReversal(alpha=1.0, max_iters=1000, auto_step=True)
    x = torch.ones(4, requires_grad=True)
    for _ in range(500):
        layer(x)
    assert layer.step == 500
    coeff = layer.coeff
    assert coeff == pytest.approx(2 / (1 + math.exp(-0.5)) - 1)
    layer(x).sum().backward()  # the 501st call uses the coefficient at step 500
    torch.testing.assert_close(x.grad, torch.full((4,), -coeff))
    layer.eval()
    layer(x)
    assert layer.step == 501  # no stepping in eval mode


def test_step_travels_with_the_state_dict():
    layer = GradientReversal(alpha=1.0, max_iters=1000, auto_step=True)
    for _ in range(7):
        layer(torch.ones(1))
    fresh = GradientReversal(alpha=1.0, max_iters=1000, auto_step=True)
    fresh.load_state_dict(layer.state_dict())
    assert fresh.step == 7 and fresh.coeff == layer.coeff


def test_fixed_coefficient():
    layer = GradientReversal(alpha=None, hi=0.7)
    x = torch.ones(2, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((2,), -0.7))
