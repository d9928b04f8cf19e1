"""Whole-step tests of AFN (SAFN / HAFN), BSP (on CDAN+E) and MDD: one batch through Lightning against a
plain-torch replay on deep copies, written from the papers (not from the library's losses):

* AFN:  ``CE + w * [L(f_s) + L(f_t)] + w_ent H(p_t)``, SAFN ``L = mean (sg(r) + delta - r)^2``, HAFN
  ``L = (mean r - R)^2`` (Xu et al. 2019), on features after TLlib's L2-preserving dropout
  (``dropout(h) * sqrt(1 - p)``, the mask read back from the trained model's dropout);
* BSP:  CDAN(+E)'s loss ``+ w_bsp * (sum of the k largest eigenvalues of F_s^T F_s and F_t^T F_t)``
  (Chen et al. 2019), the eigenvalues by ``eigvalsh`` (not an SVD);
* MDD:  ``CE + w * [gamma CE(F'(R f_s), argmax F f_s) - log(1 - softmax(F'(R f_t))[argmax F f_t])]``
  (Zhang et al. 2019) with R the GRL at its schedule's step-0 coefficient;

each with SGD (momentum, weight decay, per-module learning rates) on source and target batches of
different sizes and contents, and a few steps of each digits experiment through the Hydra app.
"""

import copy
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import QUICK, SHARED_DATA, make_cfg, needs_shared
from lightning_da.methods.afn import AFN
from lightning_da.methods.bsp import BSP
from lightning_da.methods.mdd import MDD
from lightning_da.train import train
from step_replay import TinyBackbone, assert_close_logs, assert_same_state, changed_any, run_one_batch

LR, MOMENTUM, WD = 0.1, 0.9, 1e-3
NS, NT = 5, 7


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xs, xt = torch.randn(NS, 6, generator=g), torch.randn(NT, 6, generator=g) * 1.5 + 0.5
    return {"source": (xs, torch.tensor([0, 1, 2, 1, 0])), "target": (xt, torch.arange(NT))}


def sgd():
    return partial(torch.optim.SGD, lr=LR, momentum=MOMENTUM, weight_decay=WD)


def reversed_grad(x: torch.Tensor, coeff: float) -> torch.Tensor:
    """Identity forward, gradient times -coeff backward."""
    return (1 + coeff) * x.detach() - coeff * x


def row_entropy(z: torch.Tensor) -> torch.Tensor:
    p = z.softmax(1)
    return -(p * torch.log(p + 1e-5)).sum(1)


def sgd_step(ref, loss, lr_mult: dict, names: list[str]) -> None:
    groups = [{"params": list(getattr(ref, n).parameters()), "lr": LR * lr_mult.get(n, 1.0)} for n in names]
    opt = torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, weight_decay=WD)
    opt.zero_grad()
    loss.backward()
    opt.step()


def source_acc(z, ys):
    return (z[:NS].argmax(1) == ys).float().mean()


# ---------------------------------------------------------------------------- AFN
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


# ---------------------------------------------------------------------------- BSP
@pytest.mark.parametrize("entropy_conditioning", [True, False], ids=["cdan_e", "cdan"])
def test_bsp_step_matches_replay(entropy_conditioning):
    torch.manual_seed(0)
    coeff, trade_off, w_bsp, k, w_ent = 0.3, 0.7, 0.05, 2, 0.1
    lr_mult = {"backbone": 0.5, "discriminator": 2.0}
    model = BSP(TinyBackbone(), 3, sgd(), bottleneck={"dim": 5, "batch_norm": True, "relu": True, "dropout": 0.0},
                discriminator={"hidden": 4, "num_hidden": 1, "batch_norm": True, "dropout": 0.0},
                grl={"alpha": 10.0, "max_iters": 100, "lo": coeff}, trade_off=trade_off, lr_mult=lr_mult,
                extra_losses={"entropy": w_ent}, entropy_conditioning=entropy_conditioning, bsp_weight=w_bsp, bsp_k=k)
    ref = copy.deepcopy(model)
    b = batch()
    logged = run_one_batch(model, b)

    (xs, ys), (xt, _) = b["source"], b["target"]
    ref.train()
    f = ref.bottleneck(ref.backbone(torch.cat([xs, xt])))
    z = ref.classifier(f)
    loss_cls = F.cross_entropy(z[:NS], ys)
    g = z.softmax(1).detach()
    t = torch.einsum("bc,bd->bcd", g, f).reshape(len(f), -1)
    d = ref.discriminator(reversed_grad(t, coeff)).reshape(-1)
    labels = torch.cat([torch.ones(NS), torch.zeros(NT)])
    bce = F.binary_cross_entropy_with_logits(d, labels, reduction="none")
    if entropy_conditioning:
        w = 1 + torch.exp(-reversed_grad(row_entropy(z), coeff))
        ws, wt = torch.cat([w[:NS], torch.zeros(NT)]), torch.cat([torch.zeros(NS), w[NS:]])
        weight = ws / ws.sum().detach() + wt / wt.sum().detach()
        loss_cdan = (weight * bce).sum() / weight.sum().detach()
    else:
        loss_cdan = bce.mean()
    # sigma_i(F)^2 are the eigenvalues of F^T F: the k largest, per domain
    penalty = (torch.linalg.eigvalsh(f[:NS].T @ f[:NS])[-k:].sum()
               + torch.linalg.eigvalsh(f[NS:].T @ f[NS:])[-k:].sum())
    loss_transfer = loss_cdan + w_bsp * penalty
    ent = row_entropy(z[NS:]).mean()
    loss = loss_cls + trade_off * loss_transfer + w_ent * ent
    sgd_step(ref, loss, lr_mult, ["backbone", "bottleneck", "classifier", "discriminator"])

    assert_close_logs(logged, {"train/loss": loss, "train/loss_cls": loss_cls, "train/loss_transfer": loss_transfer,
                               "train/loss_bsp": penalty, "train/loss_entropy": ent, "train/grl_coeff": coeff,
                               "train/source_acc": source_acc(z, ys)}, rtol=1e-4)
    assert_same_state(model, ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- MDD
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


# ---------------------------------------------------------------- a few steps through the Hydra app
@pytest.mark.slow
@needs_shared(SHARED_DATA)
@pytest.mark.parametrize("name,method", [("afn", "AFN"), ("bsp", "BSP"), ("mdd", "MDD")])
def test_digits_experiment_runs(tmp_path, name, method):
    res = train(make_cfg(tmp_path, QUICK + [f"experiment=digits_{name}", f"paths.data_dir={SHARED_DATA}"]))
    assert res["method"] == method and res["steps"] == 4
    acc = res["last"]["test/target_acc"]
    assert acc == acc and 0 <= acc <= 1  # finite
