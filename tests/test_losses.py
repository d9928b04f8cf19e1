"""DANN, CDAN, CDAN+E and the extra loss terms against independent computations."""

import math

import numpy as np
import pytest
import torch

from lightning_da.losses import EXTRA_LOSSES, ExtraLoss, cdan_loss, dann_loss, entropy, entropy_weights, multilinear_map


def bce(logit: float, label: float) -> float:
    p = 1.0 / (1.0 + math.exp(-logit))
    return -(label * math.log(p) + (1 - label) * math.log(1 - p))


def softmax_np(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_dann_loss_hand_computed():
    ds, dt = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.3, -0.2])
    expected = 0.5 * (np.mean([bce(v, 1) for v in ds.tolist()]) + np.mean([bce(v, 0) for v in dt.tolist()]))
    assert dann_loss(ds, dt).item() == pytest.approx(expected, rel=1e-6)


def test_multilinear_map_is_outer_product():
    f, g = torch.randn(4, 3), torch.softmax(torch.randn(4, 5), 1)
    t = multilinear_map(f, g)
    assert t.shape == (4, 15)
    for i in range(4):
        torch.testing.assert_close(t[i], torch.outer(g[i], f[i]).flatten())


def test_cdan_loss_plain():
    d = torch.tensor([1.0, -0.5, 0.2, 0.7])
    expected = np.mean([bce(1.0, 1), bce(-0.5, 1), bce(0.2, 0), bce(0.7, 0)])
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


def test_entropy_values():
    z = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    h = entropy(z, reduction="none")
    assert h[0].item() == pytest.approx(math.log(2), abs=1e-4)
    assert h[1].item() == pytest.approx(0.0, abs=1e-3)


def test_information_maximization_numpy():
    z = np.random.default_rng(0).normal(size=(7, 4))
    p = softmax_np(z)
    cond = -(p * np.log(p + 1e-5)).sum(1).mean()
    pm = p.mean(0)
    expected = cond + (pm * np.log(pm + 1e-5)).sum()
    assert EXTRA_LOSSES["im"](torch.tensor(z)).item() == pytest.approx(expected, rel=1e-6)


def test_bnm_numpy():
    z = np.random.default_rng(1).normal(size=(6, 4))
    expected = -np.linalg.svd(softmax_np(z), compute_uv=False).sum() / 4  # min(B, C) singular values
    assert EXTRA_LOSSES["bnm"](torch.tensor(z)).item() == pytest.approx(expected, rel=1e-6)


def test_mcc_numpy():
    z = np.random.default_rng(2).normal(size=(5, 3)) * 2
    T = 2.5
    p = softmax_np(z / T)
    h = -(p * np.log(p + 1e-5)).sum(1)
    w = 1 + np.exp(-h)
    w = 5 * w / w.sum()
    conf = np.zeros((3, 3))
    for i in range(5):
        conf += w[i] * np.outer(p[i], p[i])
    conf = conf / conf.sum(1, keepdims=True)
    expected = (conf.sum() - np.trace(conf)) / 3
    assert EXTRA_LOSSES["mcc"](torch.tensor(z)).item() == pytest.approx(expected, rel=1e-6)


def test_class_balance_numpy():
    """TLlib's MCD 'entropy': -1/K sum_k log(mean_i p_ik + 1e-6), lowest (log K) for a balanced mean prediction."""
    z = np.random.default_rng(3).normal(size=(6, 4)) * 3
    expected = -np.mean(np.log(softmax_np(z).mean(0) + 1e-6))
    assert EXTRA_LOSSES["class_balance"](torch.tensor(z)).item() == pytest.approx(expected, rel=1e-6)
    balanced = torch.tensor([[9.0, 0, 0, 0], [0, 9.0, 0, 0], [0, 0, 9.0, 0], [0, 0, 0, 9.0]])
    assert EXTRA_LOSSES["class_balance"](balanced).item() == pytest.approx(math.log(4), rel=1e-4)
    assert EXTRA_LOSSES["class_balance"](balanced[[0, 0, 0, 1]]).item() > math.log(4) + 0.5


def test_extra_loss_weighting_and_unknown_name():
    z = torch.randn(4, 3)
    total, terms = ExtraLoss({"entropy": 0.5, "im": 2.0})(z)
    torch.testing.assert_close(total, 0.5 * entropy(z) + 2.0 * EXTRA_LOSSES["im"](z))
    assert set(terms) == {"entropy", "im"}
    with pytest.raises(ValueError, match="available"):
        ExtraLoss({"entropie": 1.0})
