"""Whole-step test of DANN: one batch through Lightning against a plain-torch replay on deep copies.

The replay is written from the paper (Ganin & Lempitsky 2015), not from the library's losses:
``L = CE(C(f_s), y_s) + trade_off * 1/2 [BCE(D(R(f_s)), 1) + BCE(D(R(f_t)), 0)] + w_ent H(p_t)``
with R the gradient reversal at coefficient ``lo`` (step 0 of the schedule) and SGD with momentum,
weight decay and per-module learning rates.
"""

import copy
from functools import partial

import torch
import torch.nn.functional as F

from lightning_da.methods import DANN
from step_replay import TinyBackbone, assert_close_logs, assert_same_state, batch, reversed_grad, run_one_batch


def test_dann_step_matches_replay():
    torch.manual_seed(0)
    lr, trade_off, coeff, w_ent = 0.1, 0.7, 0.3, 0.2
    model = DANN(TinyBackbone(), 3, partial(torch.optim.SGD, lr=lr, momentum=0.9, weight_decay=1e-3),
                 bottleneck={"dim": 5, "batch_norm": True, "relu": True, "dropout": 0.0},
                 discriminator={"hidden": 4, "num_hidden": 1, "batch_norm": True, "dropout": 0.0},
                 grl={"alpha": 10.0, "max_iters": 100, "lo": coeff}, trade_off=trade_off,
                 lr_mult={"backbone": 0.5, "discriminator": 2.0}, extra_losses={"entropy": w_ent})
    ref = copy.deepcopy(model)
    b = batch()
    logged = run_one_batch(model, b)

    (xs, ys), (xt, _) = b["source"], b["target"]
    ns = len(xs)
    ref.train()
    f = ref.bottleneck(ref.backbone(torch.cat([xs, xt])))
    z = ref.classifier(f)
    loss_cls = F.cross_entropy(z[:ns], ys)
    d = ref.discriminator(reversed_grad(f, coeff)).squeeze(-1)
    loss_d = 0.5 * (F.binary_cross_entropy_with_logits(d[:ns], torch.ones(ns))
                    + F.binary_cross_entropy_with_logits(d[ns:], torch.zeros(len(xt))))
    p_t = z[ns:].softmax(1)
    ent = -(p_t * torch.log(p_t + 1e-5)).sum(1).mean()
    loss = loss_cls + trade_off * loss_d + w_ent * ent
    groups = [{"params": list(ref.backbone.parameters()), "lr": lr * 0.5},
              {"params": list(ref.bottleneck.parameters()), "lr": lr},
              {"params": list(ref.classifier.parameters()), "lr": lr},
              {"params": list(ref.discriminator.parameters()), "lr": lr * 2.0}]
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=1e-3)
    opt.zero_grad()
    loss.backward()
    opt.step()

    assert_close_logs(logged, {"train/loss": loss, "train/loss_cls": loss_cls, "train/loss_transfer": loss_d,
                               "train/loss_entropy": ent, "train/grl_coeff": coeff,
                               "train/source_acc": (z[:ns].argmax(1) == ys).float().mean()})
    assert_same_state(model, ref)
