"""CMKD's distillation losses (losses/distillation.py): the Gini impurity and the agreement weight
against sample-by-sample references, and the ramp."""

import math

import pytest
import torch

from lightning_da.losses import agreement_weight, gini_impurity, sigmoid_ramp


def gini_reference(p, w, form):
    """Sample by sample: code = sum_i w_i (1 - sum_c p_ic^2 / sum_j p_jc); paper = mean_i w_i (1 - sum_c p_ic^2)."""
    b, c = p.shape
    mass = [sum(p[j, k].item() for j in range(b)) for k in range(c)]
    terms = []
    for i in range(b):
        wi = w if isinstance(w, float) else w[i].item()
        s = sum(p[i, k].item() ** 2 / (mass[k] if form == "code" else 1.0) for k in range(c))
        terms.append(wi * (1 - s))
    return sum(terms) if form == "code" else sum(terms) / b


def test_gini_impurity_and_alpha_against_reference():
    torch.manual_seed(1)
    z_h, z_g = torch.randn(6, 4), torch.randn(6, 4) * 3
    p_h, p_g = z_h.softmax(-1), z_g.softmax(-1)
    w = torch.rand(6)
    for form in ("code", "paper"):
        assert gini_impurity(p_h, w, form).item() == pytest.approx(gini_reference(p_h, w, form), rel=1e-5)
        assert gini_impurity(p_h, 1.0, form).item() == pytest.approx(gini_reference(p_h, 1.0, form), rel=1e-5)
    # the class mass is a constant: the gradient is -2 w_i p_ic / N_c
    p = p_h.clone().requires_grad_(True)
    gini_impurity(p, w, "code").backward()
    torch.testing.assert_close(p.grad, -2 * w[:, None] * p_h / p_h.sum(0, keepdim=True))
    for direction, (a, b) in (("code", (p_g, p_h)), ("paper", (p_h, p_g))):
        kl = [sum(a[i, k].item() * math.log(a[i, k].item() / b[i, k].item()) for k in range(4)) for i in range(6)]
        torch.testing.assert_close(agreement_weight(z_h, z_g, direction), torch.tensor([math.exp(-v) for v in kl]))
    assert sigmoid_ramp(0) == 0.0 and sigmoid_ramp(10000) == pytest.approx(2 / (1 + math.exp(-1)) - 1)
    assert sigmoid_ramp(50000) == sigmoid_ramp(10000) and sigmoid_ramp(5000, 1.0, 10000) == pytest.approx(2 / (1 + math.exp(-0.5)) - 1)
