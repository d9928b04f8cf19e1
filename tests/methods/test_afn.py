"""AFN (SAFN / HAFN, Xu et al. 2019): the whole step against a plain-torch replay on deep copies,
written from the paper (not from the library's losses), and the heads and evaluation.

The replay: ``CE + w * [L(f_s) + L(f_t)] + w_ent H(p_t)``, SAFN ``L = mean (sg(r) + delta - r)^2``, HAFN
``L = (mean r - R)^2``, on features after TLlib's L2-preserving dropout (``dropout(h) * sqrt(1 - p)``,
the mask read back from the trained model's dropout), with SGD (momentum, weight decay, per-module
learning rates) on source and target batches of different sizes and contents; with
``domain_forward=separate`` (TLlib's afn.py) the source and the target batch each go through the
network on their own.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_da.methods.afn import AFN
from step_replay import (NS, NT, TinyBackbone, assert_close_logs, assert_same_state, batch, row_entropy, run_one_batch,
                         sgd, sgd_step, source_acc)


@pytest.mark.parametrize("variant", ["safn", "hafn"])
def test_afn_step_matches_replay(variant):
    torch.manual_seed(0)
    p, delta, radius, trade_off, w_ent = 0.4, 0.3, 2.0, 0.2, 0.15
    lr_mult = {"backbone": 0.5, "classifier": 2.0}
    model = AFN(TinyBackbone(), 3, sgd(), bottleneck={"dim": 5, "batch_norm": True, "relu": True, "dropout": p},
                variant=variant, delta=delta, radius=radius, trade_off=trade_off, lr_mult=lr_mult,
                extra_losses={"entropy": w_ent})
    ref = copy.deepcopy(model)
    seen = {}
    dropout = next(m for m in model.bottleneck.modules() if isinstance(m, nn.Dropout))
    dropout.register_forward_hook(lambda m, i, o: seen.update(mask=(o != 0).float()))  # returns None: output kept
    b = batch()
    logged = run_one_batch(model, b)

    (xs, ys), (xt, _) = b["source"], b["target"]
    ref.train()
    linear, bn = ref.bottleneck[0], ref.bottleneck[1]
    h = torch.relu(bn(linear(ref.backbone(torch.cat([xs, xt])))))
    f = h * seen["mask"] / (1 - p) * math.sqrt(1 - p)  # dropout, then TLlib's L2-preserving rescale
    z = ref.classifier(f)
    loss_cls = F.cross_entropy(z[:NS], ys)
    r_s, r_t = f[:NS].norm(dim=1), f[NS:].norm(dim=1)
    if variant == "safn":
        loss_norm = ((r_s.detach() + delta - r_s) ** 2).mean() + ((r_t.detach() + delta - r_t) ** 2).mean()
    else:
        loss_norm = (r_s.mean() - radius) ** 2 + (r_t.mean() - radius) ** 2
    ent = row_entropy(z[NS:]).mean()
    loss = loss_cls + trade_off * loss_norm + w_ent * ent
    sgd_step(ref, loss, lr_mult, ["backbone", "bottleneck", "classifier"])

    assert_close_logs(logged, {"train/loss": loss, "train/loss_cls": loss_cls, "train/loss_transfer": loss_norm,
                               "train/loss_entropy": ent, "train/feature_norm_source": r_s.mean(),
                               "train/feature_norm_target": r_t.mean(), "train/source_acc": source_acc(z, ys)})
    assert_same_state(model, ref)


def test_afn_separate_forward_matches_replay():
    """``domain_forward=separate`` (TLlib's afn.py): the source batch, then the target batch, each through
    the network on its own, so every BatchNorm normalises one domain and updates its running statistics
    twice, source first."""
    torch.manual_seed(0)
    p, delta, trade_off, w_ent = 0.4, 0.3, 0.2, 0.15
    model = AFN(TinyBackbone(), 3, sgd(), bottleneck={"dim": 5, "batch_norm": True, "relu": True, "dropout": p},
                delta=delta, trade_off=trade_off, extra_losses={"entropy": w_ent}, domain_forward="separate")
    ref = copy.deepcopy(model)
    masks = []
    dropout = next(m for m in model.bottleneck.modules() if isinstance(m, nn.Dropout))
    dropout.register_forward_hook(lambda m, i, o: masks.append((o != 0).float()))
    b = batch()
    logged = run_one_batch(model, b)

    (xs, ys), (xt, _) = b["source"], b["target"]
    ref.train()
    linear, bn = ref.bottleneck[0], ref.bottleneck[1]
    fs, ft = (torch.relu(bn(linear(ref.backbone(x)))) * m / (1 - p) * math.sqrt(1 - p) for x, m in zip((xs, xt), masks))
    z = ref.classifier(torch.cat([fs, ft]))
    loss_cls = F.cross_entropy(z[:NS], ys)
    r_s, r_t = fs.norm(dim=1), ft.norm(dim=1)
    loss_norm = ((r_s.detach() + delta - r_s) ** 2).mean() + ((r_t.detach() + delta - r_t) ** 2).mean()
    ent = row_entropy(z[NS:]).mean()
    loss = loss_cls + trade_off * loss_norm + w_ent * ent
    sgd_step(ref, loss, {}, ["backbone", "bottleneck", "classifier"])

    assert len(masks) == 2 and [len(m) for m in masks] == [NS, NT]
    assert_close_logs(logged, {"train/loss": loss, "train/loss_cls": loss_cls, "train/loss_transfer": loss_norm,
                               "train/loss_entropy": ent, "train/source_acc": source_acc(z, ys)})
    assert_same_state(model, ref)   # the BN running statistics included: two updates, source first
    with pytest.raises(ValueError, match="domain_forward"):
        AFN(TinyBackbone(), 3, sgd(), domain_forward="both")


def test_afn_heads_and_evaluation():
    torch.manual_seed(0)
    model = AFN(TinyBackbone(), 3, sgd(), bottleneck={"dim": 50, "batch_norm": True, "relu": True, "dropout": 0.5})
    lin, bn = model.bottleneck[0], model.bottleneck[1]
    assert lin.weight.std().item() == pytest.approx(0.01, rel=0.2) and lin.bias.abs().max() < 0.05  # TLlib init
    assert bn.weight.std().item() == pytest.approx(0.01, rel=0.5) and torch.all(bn.bias == 0)
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.3)
    assert model.trade_off == 0.05 and model.delta == 1.0 and model.variant == "safn"  # TLlib's defaults
    x = torch.randn(4, 6)
    model.eval()  # no dropout, no rescale at evaluation
    torch.testing.assert_close(model.features(x), model.bottleneck(model.backbone(x)))
    with pytest.raises(ValueError, match="tllib_init"):
        AFN(TinyBackbone(), 3, sgd(), classifier_init="xavier")
    with pytest.raises(ValueError, match="variant"):
        AFN(TinyBackbone(), 3, sgd(), variant="iafn")
