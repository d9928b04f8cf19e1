"""Whole-step tests of BSP (Chen et al. 2019): batches through Lightning against a plain-torch replay on
deep copies, written from the paper (not from the library's losses): the adversary's loss (CDAN(+E), or
DANN as TLlib's bsp.py) ``+ w_bsp * (sum of the k largest eigenvalues of F_s^T F_s and F_t^T F_t)``, the
eigenvalues by ``eigvalsh`` (not an SVD), with SGD (momentum, weight decay, per-module learning rates) on
source and target batches of different sizes and contents; and the source pre-training before it.
"""

import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lightning_da.methods.bsp import BSP
from step_replay import (BOTTLENECK, DISCRIMINATOR, LR, MOMENTUM, NS, NT, WD, TinyBackbone, assert_close_logs,
                         assert_same_state, batch, forward, reversed_grad, row_entropy, run_one_batch, sgd, sgd_step,
                         source_acc)


def make_bsp(coeff: float, **kw) -> BSP:
    """BSP on the replays' tiny network: bottleneck 5, discriminator 4, a GRL ramp from ``coeff``."""
    return BSP(TinyBackbone(), 3, sgd(), bottleneck=BOTTLENECK, discriminator=DISCRIMINATOR,
               grl={"alpha": 10.0, "max_iters": 100, "lo": coeff}, **kw)


def replay_forward(ref, b):
    """The replay's ``[x_s; x_t]`` forward in training mode: features, logits, source labels, source CE."""
    (xs, ys), (xt, _) = b["source"], b["target"]
    ref.train()
    f, z = forward(ref, torch.cat([xs, xt]))
    return f, z, ys, F.cross_entropy(z[:NS], ys)


@pytest.mark.parametrize("entropy_conditioning", [True, False], ids=["cdan_e", "cdan"])
def test_bsp_step_matches_replay(entropy_conditioning):
    torch.manual_seed(0)
    coeff, trade_off, w_bsp, k, w_ent = 0.3, 0.7, 0.05, 2, 0.1
    lr_mult = {"backbone": 0.5, "discriminator": 2.0}
    model = make_bsp(coeff, trade_off=trade_off, lr_mult=lr_mult, extra_losses={"entropy": w_ent},
                     entropy_conditioning=entropy_conditioning, bsp_weight=w_bsp, bsp_k=k)
    ref = copy.deepcopy(model)
    b = batch()
    logged = run_one_batch(model, b)

    f, z, ys, loss_cls = replay_forward(ref, b)
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


def test_bsp_on_dann_step_matches_replay():
    """``adversary=dann`` (TLlib's bsp.py): DANN's discriminator on the features, 1/2 [BCE_s + BCE_t]."""
    torch.manual_seed(0)
    coeff, trade_off, w_bsp, k = 0.3, 0.7, 0.05, 1
    model = make_bsp(coeff, trade_off=trade_off, adversary="dann", entropy_conditioning=False, bsp_weight=w_bsp,
                     bsp_k=k)
    assert model.discriminator[0].in_features == 5                    # the features, not C x d
    ref = copy.deepcopy(model)
    b = batch()
    logged = run_one_batch(model, b)

    f, z, ys, loss_cls = replay_forward(ref, b)
    d = ref.discriminator(reversed_grad(f, coeff)).reshape(-1)
    loss_dann = 0.5 * (F.binary_cross_entropy_with_logits(d[:NS], torch.ones(NS))
                       + F.binary_cross_entropy_with_logits(d[NS:], torch.zeros(NT)))
    penalty = torch.linalg.eigvalsh(f[:NS].T @ f[:NS])[-1] + torch.linalg.eigvalsh(f[NS:].T @ f[NS:])[-1]
    loss_transfer = loss_dann + w_bsp * penalty
    loss = loss_cls + trade_off * loss_transfer
    sgd_step(ref, loss, {}, ["backbone", "bottleneck", "classifier", "discriminator"])

    assert_close_logs(logged, {"train/loss": loss, "train/loss_cls": loss_cls, "train/loss_transfer": loss_transfer,
                               "train/loss_bsp": penalty, "train/grl_coeff": coeff}, rtol=1e-4)
    assert_same_state(model, ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="entropy_conditioning=false"):
        BSP(TinyBackbone(), 3, sgd(), adversary="dann")
    with pytest.raises(ValueError, match="adversary"):
        BSP(TinyBackbone(), 3, sgd(), adversary="mdd")


def test_bsp_source_pretraining_then_adaptation_matches_replay():
    """``pretrain_epochs``: source CE alone (only the source forwarded) at ``pretrain_lr`` with the schedule
    from 0, then BSP + DANN from those weights with fresh momentum, ``optimizer.lr`` and the schedule from 0
    again; the warm-start GRL (auto_step) counts adaptation steps only."""
    from lightning_da.models.grl import grl_coefficient
    from lightning_da.optim import inv_schedule
    from step_replay import OneBatchData, run_batches

    torch.manual_seed(0)
    pre_lr, gamma, w_bsp = 0.02, 0.5, 0.05
    inv = lambda i: (1 + gamma * i) ** -0.75  # noqa: E731
    grl = {"alpha": 1.0, "max_iters": 2, "lo": 0.0, "hi": 1.0, "auto_step": True}
    model = BSP(TinyBackbone(), 3, sgd(), scheduler=partial(inv_schedule, gamma=gamma),
                bottleneck={"dim": 5, "batch_norm": True, "relu": True, "dropout": 0.0},
                discriminator={"hidden": 4, "num_hidden": 1, "batch_norm": True, "dropout": 0.0}, grl=grl,
                adversary="dann", entropy_conditioning=False, bsp_weight=w_bsp, pretrain_epochs=1, pretrain_lr=pre_lr)
    ref = copy.deepcopy(model)
    b = batch()
    logged, _ = run_batches(model, data=OneBatchData(b, repeat=2), max_epochs=2)   # 2 pre-training + 2 adaptation steps

    (xs, ys), (xt, _) = b["source"], b["target"]
    ref.train()
    disc_before = copy.deepcopy(ref.discriminator.state_dict())
    names = ["backbone", "bottleneck", "classifier", "discriminator"]
    params = [{"params": list(getattr(ref, n).parameters())} for n in names]
    opt = torch.optim.SGD(params, lr=pre_lr, momentum=MOMENTUM, weight_decay=WD)
    for i in range(2):                                    # pre-training: the source batch alone
        for g in opt.param_groups:
            g["lr"] = pre_lr * inv(i)
        loss = F.cross_entropy(ref.classifier(ref.bottleneck(ref.backbone(xs))), ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(v, disc_before[k]) for k, v in ref.discriminator.state_dict().items())
    opt = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=WD)   # a new optimiser: fresh momentum
    for i in range(2):                                    # adaptation
        for g in opt.param_groups:
            g["lr"] = LR * inv(i)
        f = ref.bottleneck(ref.backbone(torch.cat([xs, xt])))
        z = ref.classifier(f)
        coeff = grl_coefficient(i, 2, 1.0)
        d = ref.discriminator(reversed_grad(f, coeff)).reshape(-1)
        loss_dann = 0.5 * (F.binary_cross_entropy_with_logits(d[:NS], torch.ones(NS))
                           + F.binary_cross_entropy_with_logits(d[NS:], torch.zeros(NT)))
        penalty = torch.linalg.eigvalsh(f[:NS].T @ f[:NS])[-1] + torch.linalg.eigvalsh(f[NS:].T @ f[NS:])[-1]
        loss = F.cross_entropy(z[:NS], ys) + loss_dann + w_bsp * penalty
        opt.zero_grad()
        loss.backward()
        opt.step()

    assert [("train/loss_transfer" in row) for row in logged] == [False, False, True, True]
    assert_close_logs(logged[-1], {"train/loss": loss, "train/grl_coeff": grl_coefficient(1, 2, 1.0)}, rtol=1e-4)
    ref.grl.step = 2                                      # the GRL counted its 2 adaptation calls
    assert_same_state(model, ref, rtol=1e-4, atol=1e-5)
