"""ADDA: batches through Lightning against a plain-torch replay on deep copies (written from the paper
and TLlib, not from the library's losses), and the options it refuses.

2 source pre-training steps (own optimiser, own inv schedule), the switch (frozen source encoder with
BatchNorm in eval mode), 2 adaptation steps (GRL: one joint step; GAN: D step, then the
inverted-label encoder step), whose schedule restarts at 0. The whole state_dict is compared, the
source encoder, the frozen classifier and the GRL's step counter included.
"""

import copy
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lightning_da.methods.adda import ADDA
from lightning_da.optim import inv_schedule
from step_replay import (GAMMA, POWER, OneBatchData, TinyBackbone, assert_close_logs, assert_same_state, inv,
                         replay_sgd, reversed_grad, run_batches, xs_ys_xt)


def bce(d, label):
    return F.binary_cross_entropy_with_logits(d, torch.full_like(d, float(label)))


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
    opt = replay_sgd([{"params": list(ref.backbone.parameters()), "lr": pre_lr * 0.5},
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
    opt_e = replay_sgd([{"params": list(ref.backbone.parameters()), "lr": lr * 0.5},
                 {"params": list(ref.bottleneck.parameters()), "lr": lr}], lr)
    opt_d = replay_sgd([{"params": list(ref.discriminator.parameters()), "lr": lr * 2.0}], lr)
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
