"""The extra-loss terms (losses/regularizers.py): information maximisation, BNM, MCC and the class balance
against numpy and element loops, MCC's TLlib form (column normalisation) against the library's row normalisation, and
the weighting of the configured terms."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lightning_da.losses import EXTRA_LOSSES, ExtraLoss, entropy
from lightning_da.losses.regularizers import minimum_class_confusion
from step_replay import grads, softmax_np


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


def test_mcc_against_loops():
    torch.manual_seed(2)
    z = torch.randn(6, 3, dtype=torch.float64)
    got = minimum_class_confusion(z, temperature=2.0)
    p = [F.softmax(z[i] / 2.0, 0).tolist() for i in range(6)]
    h = [-sum(q * math.log(q + 1e-5) for q in row) for row in p]
    w = [1 + math.exp(-x) for x in h]
    w = [6 * x / sum(w) for x in w]
    conf = [[sum(w[i] * p[i][a] * p[i][b] for i in range(6)) for b in range(3)] for a in range(3)]
    conf = [[x / sum(row) for x in row] for row in conf]
    want = (sum(map(sum, conf)) - sum(conf[k][k] for k in range(3))) / 3
    assert float(got) == pytest.approx(want, rel=1e-4)


def test_mcc_equals_tllibs_column_normalised_form():
    """TLlib divides the confusion matrix by a 1-D tensor of row sums, i.e. column j by sum_j; the
    matrix P^T W P is symmetric, so the loss equals the library's row-normalised one, with gradients."""
    torch.manual_seed(0)
    z = torch.randn(7, 4, requires_grad=True)
    t = 2.5
    p = F.softmax(z / t, 1)
    h = -(p * torch.log(p + 1e-5)).sum(1).detach()
    w = 1 + torch.exp(-h)
    w = (7 * w / w.sum()).unsqueeze(1)
    c = (p * w).t() @ p
    c = c / c.sum(dim=1)
    tllib = (c.sum() - c.trace()) / 4
    ours = minimum_class_confusion(z, t)
    torch.testing.assert_close(ours, tllib)
    torch.testing.assert_close(grads(ours, (z,))[0], grads(tllib, (z,))[0])
