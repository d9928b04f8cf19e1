"""MDD (Zhang et al. 2019): the whole step against a plain-torch replay on deep copies, written from
the paper (not from the library's losses), and the heads and refusals.

The replay: ``CE + w * [gamma CE(F'(R f_s), argmax F f_s) - log(1 - softmax(F'(R f_t))[argmax F f_t])]``
with R the GRL at its schedule's step-0 coefficient, with SGD (momentum, weight decay, per-module
learning rates) on source and target batches of different sizes and contents.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_da.methods.mdd import MDD
from step_replay import (NS, NT, TinyBackbone, assert_close_logs, assert_same_state, batch, changed_any, reversed_grad,
                         row_entropy, run_one_batch, sgd, sgd_step, source_acc)


def test_mdd_step_matches_replay():
    torch.manual_seed(0)
    coeff, margin, trade_off, w_ent = 0.05, 2.5, 0.7, 0.1
    lr_mult = {"backbone": 0.5, "classifier": 1.5, "adv_head": 2.0}
    model = MDD(TinyBackbone(), 3, sgd(),
                bottleneck={"dim": 5, "batch_norm": True, "relu": True, "dropout": 0.0, "init": "normal"},
                head={"width": 4, "dropout": 0.0}, margin=margin,
                grl={"alpha": 1.0, "max_iters": 100, "lo": coeff, "hi": 0.1}, trade_off=trade_off,
                lr_mult=lr_mult, extra_losses={"entropy": w_ent})
    ref = copy.deepcopy(model)
    before = copy.deepcopy(model)
    b = batch()
    logged = run_one_batch(model, b)

    (xs, ys), (xt, _) = b["source"], b["target"]
    ref.train()
    f = ref.bottleneck(ref.backbone(torch.cat([xs, xt])))
    z = ref.classifier(f)  # the main head F
    z_adv = ref.adv_head(reversed_grad(f, coeff))  # F' behind the GRL
    pred = z.argmax(1).detach()
    loss_cls = F.cross_entropy(z[:NS], ys)
    mdd_s = F.cross_entropy(z_adv[:NS], pred[:NS])
    p_t = z_adv[NS:].softmax(1)[torch.arange(NT), pred[NS:]]
    mdd_t = -torch.log(torch.clamp(1 - p_t + 1e-6, max=1.0)).mean()
    loss_mdd = margin * mdd_s + mdd_t
    ent = row_entropy(z[NS:]).mean()
    loss = loss_cls + trade_off * loss_mdd + w_ent * ent
    sgd_step(ref, loss, lr_mult, ["backbone", "bottleneck", "classifier", "adv_head"])

    assert_close_logs(logged, {"train/loss": loss, "train/loss_cls": loss_cls, "train/loss_transfer": loss_mdd,
                               "train/mdd_source": mdd_s, "train/mdd_target": mdd_t, "train/loss_entropy": ent,
                               "train/grl_coeff": coeff, "train/source_acc": source_acc(z, ys)})
    assert_same_state(model, ref)
    assert changed_any(model, before, "adv_head") and changed_any(model, before, "classifier")
    model.eval()  # evaluation uses the main head F
    x = torch.randn(3, 6)
    torch.testing.assert_close(model(x), model.classifier(model.bottleneck(model.backbone(x))))


def test_mdd_heads_and_refusals():
    torch.manual_seed(0)
    model = MDD(TinyBackbone(), 3, sgd(), bottleneck={"dim": 40, "batch_norm": True, "relu": True, "dropout": 0.5})
    for head in (model.classifier, model.adv_head):
        kinds = [type(m).__name__ for m in head.modules() if not isinstance(m, nn.Sequential)]
        assert kinds == ["Linear", "ReLU", "Dropout", "Classifier"]  # Linear -> ReLU -> Dropout -> Linear
        assert head[0][0].out_features == 1024 and head[1].out_features == 3
        assert head[0][0].weight.std().item() == pytest.approx(0.01, rel=0.1) and torch.all(head[1].bias == 0)
    assert (model.grl.alpha, model.grl.lo, model.grl.hi, model.grl.max_iters) == (1.0, 0.0, 0.1, 1000)
    assert model.margin == 4.0
    with pytest.raises(ValueError, match=r"MDD does not use the option\(s\) \['classifier_init'\]"):
        MDD(TinyBackbone(), 3, sgd(), classifier_init="xavier")
