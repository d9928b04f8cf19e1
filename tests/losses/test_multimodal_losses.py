"""M2CAN's losses (losses/multimodal.py) against independent loops: CMCFA, CDCFA, the soft-label domain
loss, and the UACR selection."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_da.losses.multimodal import cdcfa_loss, cmcfa_loss, soft_label_domain_loss, uacr_rate, uacr_select


def unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


def test_cmcfa_against_loops():
    torch.manual_seed(0)
    b, c = 5, 3
    t, t2, v, v2 = unit(b, 8), unit(b, 8), unit(b, 8), unit(b, 8)
    zt = torch.randn(b, c, dtype=torch.float64, requires_grad=True)
    zv = torch.randn(b, c, dtype=torch.float64, requires_grad=True)
    got = cmcfa_loss(t, t2, v, v2, zt, zv)
    nce, kl = [], []
    for i in range(b):
        pos = sum(math.exp(float(a[i] @ w[i])) for a in (t, t2) for w in (v, v2))
        den = sum(math.exp(float(a[i] @ w[j])) for a in (t, t2) for w in (v, v2) for j in range(b))
        nce.append(-math.log(pos / den))
        pv, pt = F.softmax(zv[i], 0).tolist(), F.softmax(zt[i], 0).tolist()
        kl.append(sum(p * math.log(p / q) for p, q in zip(pv, pt)))
    want = sum(n * math.exp(-k) for n, k in zip(nce, kl)) / b + sum(kl) / b
    assert float(got.detach()) == pytest.approx(want, rel=1e-10)
    got.backward()  # the KL term is not detached: both modality heads get gradients
    assert zt.grad.abs().sum() > 0 and zv.grad.abs().sum() > 0


def test_cdcfa_against_loops():
    torch.manual_seed(1)
    dom = [[(unit(4, 6), unit(4, 6)) for _ in range(3)] for _ in range(2)]  # [modality][domain] -> (weak, strong)
    got = cdcfa_loss(dom[0], dom[1])
    want = 0.0
    for feats in dom:
        for d in range(3):
            for e in range(d + 1, 3):
                for a in feats[d]:
                    for b in feats[e]:
                        want -= sum(float(a[i] @ b[j]) for i in range(4) for j in range(4)) / 16
    assert float(got) == pytest.approx(want / 8, rel=1e-10)


def test_soft_label_domain_loss():
    d1, d2 = torch.tensor([0.3, -1.0]), torch.tensor([2.0, 0.5])
    sig = torch.sigmoid
    want = -sum(0.2 * math.log(sig(x)) + 0.8 * math.log(1 - sig(x)) for x in d1) \
        - sum(0.8 * math.log(sig(x)) + 0.2 * math.log(1 - sig(x)) for x in d2)
    assert float(soft_label_domain_loss(d1, d2, eps=0.8)) == pytest.approx(float(want) / 4, rel=1e-6)


def test_uacr_selection_counts_and_ranking():
    torch.manual_seed(3)
    n, c = 40, 2
    z = torch.randn(n, 2, c) * 2
    z[:30, :, 0] += 3.0  # most samples predicted class 0
    chosen, labels = uacr_select(z, rate=0.3)
    k = math.floor(0.3 * n / c)  # 6 per class
    # independent score: max p * exp(-(KL(p1||p2) + KL(p2||p1)))
    score, pred = [], []
    for i in range(n):
        p = F.softmax(z[i].mean(0), 0)
        p1, p2 = F.softmax(z[i, 0], 0), F.softmax(z[i, 1], 0)
        skl = float((p1 * (p1 / p2).log()).sum() + (p2 * (p2 / p1).log()).sum())
        score.append(float(p.max()) * math.exp(-skl))
        pred.append(int(p.argmax()))
    for cls in range(c):
        rows = [i for i in range(n) if pred[i] == cls]
        want = sorted(rows, key=lambda i: -score[i])[:k]
        got = chosen[labels == cls].tolist()
        assert got == want
        assert len(got) == min(k, len(rows))
    # a class with fewer predictions than k keeps all of them
    z2 = z.clone()
    z2[:, :, 0] += 10.0
    z2[0, :, 1] += 30.0  # the only class-1 prediction
    chosen2, labels2 = uacr_select(z2, rate=0.3)
    assert (labels2 == 1).sum() == 1 and chosen2[labels2 == 1].tolist() == [0]
    assert (labels2 == 0).sum() == k
    assert [uacr_rate(e) for e in range(5)] == pytest.approx([0.3, 0.6, 0.9, 1.0, 1.0])
