"""MCD/CGDM bi-classifier losses (losses/bi_classifier.py) against independent computations."""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lightning_da.losses.bi_classifier import (
    cgdm_entropy,
    classifier_discrepancy,
    gradient_discrepancy,
    weighted_cross_entropy,
)
from step_replay import softmax_np


EPS = 1e-5


def entropy_np(p):
    return -(p * np.log(p + EPS)).sum(-1)


def test_classifier_discrepancy_vs_numpy():
    z1, z2 = torch.randn(5, 4), torch.randn(5, 4)
    expected = np.abs(softmax_np(z1.numpy()) - softmax_np(z2.numpy())).mean()
    assert classifier_discrepancy(z1, z2).item() == pytest.approx(expected, rel=1e-5)


def test_cgdm_entropy_modes_vs_numpy():
    z = torch.randn(6, 5) * 3
    p = softmax_np(z.numpy().astype(np.float64))
    expected = {
        # the original's marginal term: sum_c (p̄_c + eps) log(p̄_c + eps) (eps also multiplies)
        "im": entropy_np(p).mean() + ((p.mean(0) + EPS) * np.log(p.mean(0) + EPS)).sum(),
        "conditional": entropy_np(p).mean(),
        "diversity": -np.log(p.mean(0) + EPS).mean(),
    }
    for mode, value in expected.items():
        assert cgdm_entropy(z, mode=mode).item() == pytest.approx(value, rel=1e-5, abs=1e-6), mode
    with pytest.raises(ValueError, match="conditional"):
        cgdm_entropy(z, mode="marginal")


def wce_reference(z, y, extra_batch_factor=True, detach_weights=False):
    """Loop over rows, as the original ``Weighted_CrossEntropy``: ``w_i = 1 + exp(-H(p_i))`` with
    gradient, divided by the constant ``sum_j w_j`` (a Python float, like its ``.detach().item()``)."""
    p = torch.softmax(z.detach() if detach_weights else z, dim=1)
    w = 1.0 + torch.exp((p * torch.log(p + EPS)).sum(1))
    norm = float(w.sum())
    terms = [w[i] / norm * -torch.log_softmax(z[i], 0)[y[i]] for i in range(len(y))]
    total = sum(terms)
    return total / len(y) if extra_batch_factor else total


@pytest.mark.parametrize("extra_batch_factor", [True, False])
@pytest.mark.parametrize("detach_weights", [False, True])
def test_weighted_cross_entropy_value_and_gradient(extra_batch_factor, detach_weights):
    z = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (7,))
    loss = weighted_cross_entropy(z, y, extra_batch_factor=extra_batch_factor, detach_weights=detach_weights)
    ref = wce_reference(z, y, extra_batch_factor, detach_weights)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    (g,), (g_ref,) = torch.autograd.grad(loss, z), torch.autograd.grad(ref, z)
    torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-12)


def test_weighted_cross_entropy_default_differentiates_the_weights():
    """The faithful default and the detached form agree in value but not in gradient."""
    z = torch.randn(7, 4, dtype=torch.float64, requires_grad=True) * 2
    y = torch.randint(0, 4, (7,))
    a, b = weighted_cross_entropy(z, y), weighted_cross_entropy(z, y, detach_weights=True)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    (ga,), (gb,) = torch.autograd.grad(a, z), torch.autograd.grad(b, z)
    assert (ga - gb).abs().max() > 1e-3 * gb.abs().max()


def cos_ref(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine with each norm clamped at eps, as torch does: the bias of a Linear feeding a train-mode
    BatchNorm has an exactly-zero gradient (round-off only), whose cosine must come out ~0, not noise."""
    return ((a / a.norm().clamp_min(eps)) * (b / b.norm().clamp_min(eps))).sum()


def gd_reference(source_loss, target_loss, params):
    """Slow reference: one autograd.grad call per loss and per tensor, explicit loop over rows."""
    terms = []
    for p in params:
        (gs,) = torch.autograd.grad(source_loss, p, create_graph=True)
        (gt,) = torch.autograd.grad(target_loss, p, create_graph=True)
        if p.dim() >= 2:
            cos = torch.stack([cos_ref(gt[r].reshape(-1), gs[r].reshape(-1)) for r in range(p.shape[0])]).mean()
        else:
            cos = cos_ref(gt, gs)
        terms.append(1 - cos)
    return sum(terms) / len(terms)


def head_losses(head, f, y_s, y_t):
    out = head(f)
    b = len(y_s)
    return F.cross_entropy(out[:b], y_s), weighted_cross_entropy(out[b:], y_t)


def test_gradient_discrepancy_matches_slow_reference_values_and_grads():
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    f = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)  # generator output, B = 5 per domain
    y_s, y_t = torch.randint(0, 3, (5,)), torch.randint(0, 3, (5,))
    params = list(head.parameters())

    loss = gradient_discrepancy(*head_losses(head, f, y_s, y_t), params)
    ref = gd_reference(*head_losses(head, f, y_s, y_t), params)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-10)
    (g,), (g_ref,) = torch.autograd.grad(loss, f), torch.autograd.grad(ref, f)
    assert g.abs().max() > 0
    torch.testing.assert_close(g, g_ref, rtol=1e-8, atol=1e-12)


def test_gradient_discrepancy_clear_errors():
    head, other = nn.Linear(4, 3), nn.Linear(4, 3)
    f = torch.randn(6, 4)
    ls, lt = F.cross_entropy(head(f[:3]), torch.tensor([0, 1, 2])), F.cross_entropy(head(f[3:]), torch.tensor([2, 1, 0]))
    with pytest.raises(ValueError, match="without parameters"):
        gradient_discrepancy(ls, lt, [])
    with pytest.raises(ValueError, match="parameter 2 .* not used"):
        gradient_discrepancy(ls, lt, [*head.parameters(), other.weight])
    frozen = torch.zeros(3)
    with pytest.raises(ValueError, match="parameter 0 .* does not require grad"):
        gradient_discrepancy(ls, lt, [frozen])
