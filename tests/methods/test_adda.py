"""Whole-step tests of ADDA, self-ensembling and CC loss: batches through Lightning against plain-torch
replays on deep copies (written from the papers / TLlib, not from the library's losses), then a few
steps of each digits experiment through the Hydra app.

* ADDA: 2 source pre-training steps (own optimiser, own inv schedule), the switch (frozen source
  encoder with BatchNorm in eval mode), 2 adaptation steps (GRL: one joint step; GAN: D step, then the
  inverted-label encoder step), whose schedule restarts at 0. The whole state_dict is compared,
  the source encoder, the frozen classifier and the GRL's step counter included.
* Self-ensembling: 2 steps; the teacher forwards the weak view in training mode (its own BN
  statistics), the student ``[x_s; x_strong]``; the EMA update follows each optimiser step.
* CC loss: one step on ``[x_s; x_weak; x_strong]``.
"""

import copy
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from conftest import QUICK, SHARED_DATA, make_cfg, needs_shared
from lightning_da.methods.adda import ADDA
from lightning_da.methods.cc_loss import CCLoss
from lightning_da.methods.self_ensemble import SelfEnsemble
from lightning_da.optim import inv_schedule
from step_replay import OneBatchData, TinyBackbone, assert_close_logs, assert_same_state, run_batches

GAMMA, POWER = 0.5, 0.75


def inv(opt):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (1 + GAMMA * i) ** -POWER)


def reversed_grad(x, coeff):
    return (1 + coeff) * x.detach() - coeff * x


def bce(d, label):
    return F.binary_cross_entropy_with_logits(d, torch.full_like(d, float(label)))


def xs_ys_xt(seed=0):
    g = torch.Generator().manual_seed(seed)
    xs, xt = torch.randn(5, 6, generator=g), torch.randn(7, 6, generator=g) * 1.5 + 0.5
    return xs, torch.tensor([0, 1, 2, 1, 0]), xt


def sgd(groups, lr):
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=1e-3)


# ---------------------------------------------------------------------------------------------- ADDA
@pytest.mark.parametrize("objective", ["grl", "gan"])
def test_adda_steps_match_replay(objective):
    torch.manual_seed(0)
    lr, pre_lr, lo, hi, alpha, max_iters = 0.1, 0.03, 0.3, 2.0, 1.0, 2
    model = ADDA(TinyBackbone(), 3, partial(torch.optim.SGD, lr=lr, momentum=0.9, weight_decay=1e-3),
                 scheduler=partial(inv_schedule, gamma=GAMMA, power=POWER),
                 bottleneck={"dim": 5, "batch_norm": True, "relu": True, "dropout": 0.0},
                 discriminator={"hidden": 4, "num_hidden": 1, "batch_norm": True, "dropout": 0.0},
                 grl={"alpha": alpha, "max_iters": max_iters, "lo": lo, "hi": hi}, objective=objective,
                 pretrain_epochs=1, pretrain_lr=pre_lr, lr_mult={"backbone": 0.5, "discriminator": 2.0, "classifier": 3.0})
    ref = copy.deepcopy(model)
    xs, ys, xt = xs_ys_xt()
    batch = {"source": (xs, ys), "target": (xt, torch.arange(7))}
    logged, _ = run_batches(model, data=OneBatchData(batch, repeat=2), max_epochs=2)

    ns = len(xs)
    ref.train()
    # phase 1: source pre-training of backbone, bottleneck and classifier
    opt = sgd([{"params": list(ref.backbone.parameters()), "lr": pre_lr * 0.5},
               {"params": list(ref.bottleneck.parameters()), "lr": pre_lr},
               {"params": list(ref.classifier.parameters()), "lr": pre_lr * 3.0}], pre_lr)
    sched = inv(opt)
    for _ in range(2):
        z = ref.classifier(ref.bottleneck(ref.backbone(xs)))
        loss = F.cross_entropy(z, ys)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    assert_close_logs(logged[1], {"train/loss": loss, "train/loss_cls": loss,
                                  "train/source_acc": (z.argmax(1) == ys).float().mean()})
    # the switch: the source encoder is the pre-trained one, frozen, BatchNorm on running statistics
    src = torch.nn.Sequential(copy.deepcopy(ref.backbone), copy.deepcopy(ref.bottleneck)).eval()
    ref.source_encoder.load_state_dict(src.state_dict())
    ref.source_frozen.fill_(True)
    # phase 2: target encoder (backbone + bottleneck) against the discriminator; schedules restart
    opt_e = sgd([{"params": list(ref.backbone.parameters()), "lr": lr * 0.5},
                 {"params": list(ref.bottleneck.parameters()), "lr": lr}], lr)
    opt_d = sgd([{"params": list(ref.discriminator.parameters()), "lr": lr * 2.0}], lr)
    sched_e, sched_d = inv(opt_e), inv(opt_d)
    for i in range(2):
        with torch.no_grad():
            f_s = src(xs)
        f_t = ref.bottleneck(ref.backbone(xt))
        if objective == "grl":
            coeff = (hi - lo) * (2 / (1 + math.exp(-alpha * i / max_iters)) - 1) + lo
            d = ref.discriminator(reversed_grad(torch.cat([f_s, f_t]), coeff))
            loss = loss_d = 0.5 * (bce(d[:ns], 1) + bce(d[ns:], 0))
            opt_e.zero_grad()
            opt_d.zero_grad()
            loss.backward()
            opt_e.step()
            opt_d.step()
        else:
            d = ref.discriminator(torch.cat([f_s, f_t.detach()]))
            loss_d = 0.5 * (bce(d[:ns], 1) + bce(d[ns:], 0))
            opt_d.zero_grad()
            loss_d.backward()
            opt_d.step()
            loss = -F.logsigmoid(ref.discriminator(f_t)).mean()  # inverted label: -log D(f_t)
            opt_e.zero_grad()
            loss.backward()
            opt_e.step()
        sched_e.step()
        sched_d.step()
    if objective == "grl":
        ref.grl.step = 2
    expected = {"train/loss": loss, "train/loss_transfer": loss, "train/loss_discriminator": loss_d,
                "train/domain_acc": torch.cat([d[:ns] > 0, d[ns:] <= 0]).float().mean()}
    if objective == "grl":
        expected["train/grl_coeff"] = coeff
    assert_close_logs(logged[3], expected)
    assert_same_state(model, ref)


def test_adda_refuses_what_it_does_not_use():
    sgd_ = partial(torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match=r"ADDA does not use the option\(s\) \['extra_losses'\]"):
        ADDA(TinyBackbone(), 3, sgd_, extra_losses={"entropy": 0.1})
    with pytest.raises(ValueError, match=r"trade_off"):
        ADDA(TinyBackbone(), 3, sgd_, trade_off=0.5)
    with pytest.raises(ValueError, match="objective"):
        ADDA(TinyBackbone(), 3, sgd_, objective="wgan")


# ---------------------------------------------------------------------------------- self-ensembling
def views(seed=1):
    g = torch.Generator().manual_seed(seed)
    x_weak = torch.randn(7, 6, generator=g) * 1.5 + 0.5
    return x_weak, x_weak + 0.3 * torch.randn(7, 6, generator=g)


def test_self_ensemble_steps_match_replay():
    torch.manual_seed(0)
    lr, alpha, w_c, w_b, w_ent = 0.2, 0.7, 2.5, 0.3, 0.1
    kw = dict(bottleneck={"dim": 5, "batch_norm": True, "relu": True, "dropout": 0.0}, lr_mult={"backbone": 0.5},
              extra_losses={"entropy": w_ent}, ema_alpha=alpha, consistency_weight=w_c, class_balance_weight=w_b)
    model = SelfEnsemble(TinyBackbone(), 3, partial(torch.optim.SGD, lr=lr, momentum=0.9, weight_decay=1e-3), **kw)
    xs, ys, _ = xs_ys_xt()
    x_weak, x_strong = views()
    # a threshold between the teacher's confidences at the first step, so that the mask is mixed
    probe = copy.deepcopy(model.teacher).train()
    conf = probe["classifier"](probe["bottleneck"](probe["backbone"](x_weak))).softmax(1).amax(1).sort().values
    model.threshold = threshold = float((conf[2] + conf[3]) / 2)
    ref = copy.deepcopy(model)
    batch = {"source": (xs, ys), "target": ((x_weak, x_strong), torch.arange(7))}
    logged, _ = run_batches(model, data=OneBatchData(batch, repeat=2))

    ns = len(xs)
    ref.train()
    t = ref.teacher
    opt = sgd([{"params": list(ref.backbone.parameters()), "lr": lr * 0.5},
               {"params": list(ref.bottleneck.parameters()), "lr": lr},
               {"params": list(ref.classifier.parameters()), "lr": lr}], lr)
    masks = []
    for _ in range(2):
        with torch.no_grad():
            q = t["classifier"](t["bottleneck"](t["backbone"](x_weak))).softmax(1)
        z = ref.classifier(ref.bottleneck(ref.backbone(torch.cat([xs, x_strong]))))
        p = z[ns:].softmax(1)
        mask = (q.max(1).values > threshold).float()
        masks.append(mask)
        cons = (mask * ((p - q) ** 2).sum(1)).mean()
        pbar = p.mean(0)
        balance = -(1 / 3 * torch.log(pbar) + 2 / 3 * torch.log(1 - pbar)).mean() * mask.mean()
        ce = F.cross_entropy(z[:ns], ys)
        ent = -(p * torch.log(p + 1e-5)).sum(1).mean()
        loss = ce + w_c * cons + w_b * balance + w_ent * ent
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():  # EMA of the parameters only; the teacher's BN buffers are its own
            for name in ("backbone", "bottleneck", "classifier"):
                for pt, ps in zip(t[name].parameters(), getattr(ref, name).parameters()):
                    pt.mul_(alpha).add_(ps, alpha=1 - alpha)
    assert 0 < masks[0].sum() < 7
    assert_close_logs(logged[1], {"train/loss": loss, "train/loss_cls": ce,
                                  "train/loss_transfer": w_c * cons + w_b * balance,
                                  "train/loss_consistency": cons, "train/loss_class_balance": balance,
                                  "train/loss_entropy": ent, "train/confident_ratio": mask.mean()})
    assert_same_state(model, ref)
    assert any(k.startswith("teacher.") and "running_mean" in k for k in model.state_dict())  # checkpointed
    assert all(not p.requires_grad for p in model.teacher.parameters())


def test_self_ensemble_predicts_with_the_configured_network():
    torch.manual_seed(0)
    sgd_ = partial(torch.optim.SGD, lr=0.1)
    student = SelfEnsemble(TinyBackbone(), 3, sgd_).eval()
    teacher = SelfEnsemble(TinyBackbone(), 3, sgd_, predict_with="teacher").eval()
    x = torch.randn(4, 6)
    with torch.no_grad():
        teacher.teacher["classifier"].bias.add_(1.0)
        student.teacher["classifier"].bias.add_(1.0)
        torch.testing.assert_close(student(x), student.classifier(student.bottleneck(student.backbone(x))))
        t = teacher.teacher
        torch.testing.assert_close(teacher(x), t["classifier"](t["bottleneck"](t["backbone"](x))))
    with pytest.raises(ValueError, match=r"SelfEnsemble does not use the option\(s\) \['trade_off'\]"):
        SelfEnsemble(TinyBackbone(), 3, sgd_, trade_off=2.0)


# ---------------------------------------------------------------------------------------- CC loss
def confusion(z, temperature, rows, batch_size):
    """TLlib's CC confusion of the selected rows, written out (weights B * w / sum w, C / C.sum(1))."""
    p = F.softmax(z[rows] / temperature, 1)
    w = 1 + torch.exp((p * torch.log(p + 1e-5)).sum(1)).detach()
    w = (batch_size * w / w.sum()).unsqueeze(1)
    c = (p * w).t() @ p
    return c / c.sum(1)


def test_cc_loss_step_matches_replay():
    torch.manual_seed(0)
    lr, T, w_mcc, w_c = 0.1, 1.5, 0.7, 2.0
    model = CCLoss(TinyBackbone(), 3, partial(torch.optim.SGD, lr=lr, momentum=0.9, weight_decay=1e-3),
                   bottleneck={"dim": 5, "batch_norm": True, "relu": True, "dropout": 0.0}, classifier_init="xavier",
                   temperature=T, mcc_weight=w_mcc, consistency_weight=w_c, lr_mult={"backbone": 0.5})
    xs, ys, _ = xs_ys_xt()
    x_weak, x_strong = views()
    with torch.no_grad():  # a threshold between the weak view's confidences, so that the mask is mixed
        probe = copy.deepcopy(model).train()
        zw = probe(torch.cat([xs, x_weak, x_strong]))[5:12]
        conf = F.softmax(zw / T, 1).amax(1).sort().values
    model.threshold = thr = float((conf[3] + conf[4]) / 2)
    ref = copy.deepcopy(model)
    batch = {"source": (xs, ys), "target": ((x_weak, x_strong), torch.arange(7))}
    logged, _ = run_batches(model, data=OneBatchData(batch))

    ns, b = len(xs), 7
    ref.train()
    z = ref.classifier(ref.bottleneck(ref.backbone(torch.cat([xs, x_weak, x_strong]))))
    z_w, z_s = z[ns:ns + b], z[ns + b:]
    ce = F.cross_entropy(z[:ns], ys)
    p = F.softmax(z_w / T, 1)  # MCC on the weak view
    w = 1 + torch.exp((p * torch.log(p + 1e-5)).sum(1)).detach()
    cm = (p * (b * w / w.sum()).unsqueeze(1)).t() @ p
    cm = cm / cm.sum(1, keepdim=True)
    mcc = (cm.sum() - cm.trace()) / 3
    rows = (F.softmax(z_w.detach() / T, 1).max(1).values >= thr).nonzero().squeeze(1)
    assert 0 < len(rows) < b
    cons = ((confusion(z_w.detach(), T, rows, b) - confusion(z_s, T, rows, b)) ** 2).sum() / 3 * len(rows) / b
    loss = ce + w_mcc * mcc + w_c * cons
    opt = sgd([{"params": list(ref.backbone.parameters()), "lr": lr * 0.5},
               {"params": list(ref.bottleneck.parameters()), "lr": lr},
               {"params": list(ref.classifier.parameters()), "lr": lr}], lr)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert_close_logs(logged[-1], {"train/loss": loss, "train/loss_cls": ce, "train/loss_transfer": w_mcc * mcc + w_c * cons,
                                   "train/loss_mcc": mcc, "train/loss_consistency": cons,
                                   "train/confident_ratio": len(rows) / b})
    assert_same_state(model, ref)


# ------------------------------------------------------------------------------ through the Hydra app
@pytest.mark.slow
@needs_shared(SHARED_DATA)
@pytest.mark.parametrize("experiment,extra", [
    ("digits_adda", ["method.pretrain_epochs=1", "trainer.max_epochs=2"]),   # both phases
    ("digits_self_ensemble", []), ("digits_cc_loss", [])])
def test_digits_experiments(tmp_path, experiment, extra):
    from lightning_da.train import train

    cfg = make_cfg(tmp_path, QUICK + [f"experiment={experiment}", f"paths.data_dir={SHARED_DATA}",
                                      "data.iters_per_epoch=2", "data.batch_size=8", *extra])
    res = train(cfg)
    assert math.isfinite(res["last"]["test/target_acc"]) and 0 <= res["last"]["test/target_acc"] <= 1
