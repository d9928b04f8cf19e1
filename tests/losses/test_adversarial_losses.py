"""The adversarial losses (losses/adversarial.py): DANN, CDAN, CDAN+E and its entropy weights against
independent computations."""

import math

import numpy as np
import pytest
import torch

from lightning_da.losses import cdan_loss, dann_loss, entropy_weights, multilinear_map


def scalar_bce(logit: float, label: float) -> float:
    p = 1.0 / (1.0 + math.exp(-logit))
    return -(label * math.log(p) + (1 - label) * math.log(1 - p))


def test_dann_loss_hand_computed():
    ds, dt = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.3, -0.2])
    expected = 0.5 * (np.mean([scalar_bce(v, 1) for v in ds.tolist()]) + np.mean([scalar_bce(v, 0) for v in dt.tolist()]))
    assert dann_loss(ds, dt).item() == pytest.approx(expected, rel=1e-6)


def test_multilinear_map_is_outer_product():
    f, g = torch.randn(4, 3), torch.softmax(torch.randn(4, 5), 1)
    t = multilinear_map(f, g)
    assert t.shape == (4, 15)
    for i in range(4):
        torch.testing.assert_close(t[i], torch.outer(g[i], f[i]).flatten())


def test_cdan_loss_plain():
    d = torch.tensor([1.0, -0.5, 0.2, 0.7])
    expected = np.mean([scalar_bce(1.0, 1), scalar_bce(-0.5, 1), scalar_bce(0.2, 0), scalar_bce(0.7, 0)])
    assert cdan_loss(d, 2).item() == pytest.approx(expected, rel=1e-6)


def reference_cdan_e(d, logits, ns, coeff):
    """Loop version of the CDAN+E loss: w_i = 1 + exp(-H_i) normalised per domain then overall,
    loss = sum w_i BCE_i / sum w_i. The entropy's gradient is reversed and scaled by coeff."""
    p = torch.softmax(logits, 1)
    h = -(p * torch.log(p + 1e-5)).sum(1)
    h = h.detach() - coeff * (h - h.detach())  # value h, gradient -coeff * dh
    w = 1 + torch.exp(-h)
    src_sum, tgt_sum = w[:ns].sum().detach(), w[ns:].sum().detach()
    w = torch.stack([w[i] / (src_sum if i < ns else tgt_sum) for i in range(len(w))])
    total = 0.0
    for i in range(len(d)):
        label = 1.0 if i < ns else 0.0
        total = total + w[i] * -(label * torch.log(torch.sigmoid(d[i])) + (1 - label) * torch.log(1 - torch.sigmoid(d[i])))
    return total / w.sum().detach()


def test_cdan_e_matches_reference_values_and_gradients():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    d = torch.randn(6, requires_grad=True)
    ours = cdan_loss(d, 3, entropy_weights(logits, 3, grl_coeff=0.4))
    g_logits, g_d = torch.autograd.grad(ours, (logits, d))
    ref = reference_cdan_e(d, logits, 3, 0.4)
    r_logits, r_d = torch.autograd.grad(ref, (logits, d))
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(g_d, r_d)
    torch.testing.assert_close(g_logits, r_logits)
    assert g_logits.abs().sum() > 0  # the entropy weights do carry a (reversed) gradient


def test_entropy_weights_normalisation():
    logits = torch.randn(8, 3)
    w = entropy_weights(logits, 5, 1.0)
    assert w.sum().item() == pytest.approx(1.0, rel=1e-6)
    assert w[:5].sum().item() == pytest.approx(0.5, rel=1e-6)  # each domain gets half of the mass
