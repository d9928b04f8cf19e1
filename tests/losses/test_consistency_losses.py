"""The consistency losses of self-ensembling and CC loss (losses/consistency.py) against slow references
and hand-worked values."""

import math

import torch
import torch.nn.functional as F

from lightning_da.losses.consistency import (class_balance_loss, class_confusion, confusion_consistency,
                                             squared_consistency)


def test_squared_consistency_and_class_balance_against_loops():
    torch.manual_seed(0)
    p = torch.randn(5, 4).softmax(1).requires_grad_(True)
    q = torch.randn(5, 4).softmax(1)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    slow = sum(mask[i] * sum((p[i, c] - q[i, c]) ** 2 for c in range(4)) for i in range(5)) / 5
    loss = squared_consistency(p, q, mask)
    torch.testing.assert_close(loss, slow)
    loss.backward()
    assert p.grad[1].abs().sum() == 0 and p.grad[4].abs().sum() == 0 and p.grad[0].abs().sum() > 0
    torch.testing.assert_close(p.grad[0], 2 * (p[0] - q[0]).detach() / 5)
    pbar = [sum(p[i, c].item() for i in range(5)) / 5 for c in range(4)]
    want = -sum(0.25 * math.log(m) + 0.75 * math.log(1 - m) for m in pbar) / 4
    assert abs(class_balance_loss(p).item() - want) < 1e-6
    # uniform mean prediction is the minimum of the balance term
    assert class_balance_loss(torch.full((3, 4), 0.25)) < class_balance_loss(torch.eye(4)[[0, 0, 1]] * 0.9 + 0.025)


def slow_confusion(logits, temperature, rows):
    """MCC's confusion over the selected rows, element by element, normalised as TLlib does (C / C.sum(1),
    which divides column j by the sum of row j; C is symmetric, so this is the transpose of row-normalising)."""
    c = logits.shape[1]
    p = F.softmax(logits[rows] / temperature, dim=1)
    h = [-sum(p[i, k] * math.log(p[i, k] + 1e-5) for k in range(c)) for i in range(len(rows))]
    w = [len(logits) * (1 + math.exp(-hi)) / sum(1 + math.exp(-hj) for hj in h) for hi in h]  # TLlib: B * w / sum w
    conf = [[sum(w[i] * p[i, a] * p[i, b] for i in range(len(rows))) for b in range(c)] for a in range(c)]
    rowsum = [sum(conf[a]) for a in range(c)]
    return torch.tensor([[conf[a][b] / rowsum[b] for b in range(c)] for a in range(c)])


def test_class_confusion_against_loop():
    torch.manual_seed(1)
    z = torch.randn(6, 3) * 2
    rows = [0, 2, 3, 5]
    mask = torch.zeros(6)
    mask[rows] = 1
    got = class_confusion(z, 2.0, mask)
    torch.testing.assert_close(got, slow_confusion(z, 2.0, rows).t(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(1), torch.ones(3))
    torch.testing.assert_close(class_confusion(z, 2.0, torch.zeros(6)), torch.zeros(3, 3))  # nothing selected


def test_confusion_consistency_against_tllib_style_reference():
    torch.manual_seed(2)
    zw = torch.randn(8, 4) * 4
    zs = (zw + torch.randn(8, 4)).requires_grad_(True)
    t, thr = 1.5, 0.7
    conf = F.softmax(zw / t, 1).amax(1)
    rows = [i for i in range(8) if conf[i] >= thr]
    assert 0 < len(rows) < 8  # a mixed mask
    diff = slow_confusion(zw, t, rows) - slow_confusion(zs.detach(), t, rows)
    want = (diff ** 2).sum() / 4 * len(rows) / 8
    zw_var = zw.clone().requires_grad_(True)
    loss, mask = confusion_consistency(zw_var, zs, t, thr)
    assert mask.tolist() == [float(i in rows) for i in range(8)]
    torch.testing.assert_close(loss, want.float(), rtol=1e-5, atol=1e-7)
    loss.backward()
    assert zw_var.grad is None  # the weak view is a fixed target
    unselected = [i for i in range(8) if i not in rows]
    assert zs.grad[unselected].abs().sum() == 0 and zs.grad[rows].abs().sum() > 0
    # finite differences on one selected strong logit
    i = rows[0]
    eps = 1e-3
    plus, minus = zs.detach().clone(), zs.detach().clone()
    plus[i, 1] += eps
    minus[i, 1] -= eps
    fd = (confusion_consistency(zw, plus.double(), t, thr)[0] - confusion_consistency(zw, minus.double(), t, thr)[0]) / (2 * eps)
    assert abs(fd.item() - zs.grad[i, 1].item()) < 1e-3 * max(1.0, abs(fd.item()))
    # no confident row: zero loss
    assert confusion_consistency(zw, zs, t, 0.9999)[0].item() == 0.0
