"""Whole-step tests of SourceOnly: one batch through Lightning against a plain-torch replay on deep
copies of the modules taken before the step: ``L = CE(C(f_s), y_s)``, only the source forwarded (BN
statistics of the source alone); with ``forward_target`` the batch ``[x_s; x_t]`` goes through in one
call and the extra terms act on the target logits.

The replay uses SGD with momentum and weight decay, per-module learning-rate multipliers and the
``inv`` schedule; each test compares every logged term, the whole state_dict and the optimiser's state
(momentum buffers, learning rates after the scheduler step).
"""

import copy

import torch
import torch.nn.functional as F

from lightning_da.methods import SourceOnly
from step_replay import (BOTTLENECK, SOURCE_LABELS, TinyBackbone, assert_close_logs, assert_same_optimizer,
                         assert_same_state, forward, make_batch, mcc, replay_step, row_entropy, run_one_batch,
                         scheduler, sgd)


def test_source_only_step_matches_replay():
    """Default: only the source is forwarded (BN statistics from the source alone), L = CE."""
    torch.manual_seed(0)
    lr_mult = {"backbone": 0.5, "classifier": 3.0}
    model = SourceOnly(TinyBackbone(), 3, sgd(), scheduler(), bottleneck=BOTTLENECK, lr_mult=lr_mult)
    ref = copy.deepcopy(model)
    xs, xt, _ = make_batch()
    logged = run_one_batch(model, {"source": (xs, SOURCE_LABELS), "target": (xt, torch.arange(7))})

    ref.train()
    _, z = forward(ref, xs)
    loss = F.cross_entropy(z, SOURCE_LABELS)
    opt = replay_step(ref, loss, lr_mult, ["backbone", "bottleneck", "classifier"])

    assert_close_logs(logged, {"train/loss": loss, "train/loss_cls": loss, "train/loss_transfer": 0.0,
                               "train/source_acc": (z.argmax(1) == SOURCE_LABELS).float().mean()})
    assert_same_state(model, ref)
    assert_same_optimizer(model, opt)


def test_source_only_forward_target_extra_losses_match_replay():
    """``forward_target``: ``[x_s; x_t]`` in one call (BN statistics of both), the extra terms on the
    target logits with their own weights."""
    torch.manual_seed(0)
    lr_mult = {"bottleneck": 2.0, "classifier": 0.25}
    w_ent, w_mcc = 0.3, 0.2
    model = SourceOnly(TinyBackbone(), 3, sgd(), scheduler(), bottleneck=BOTTLENECK, lr_mult=lr_mult,
                       forward_target=True, extra_losses={"entropy": w_ent, "mcc": w_mcc})
    ref = copy.deepcopy(model)
    xs, xt, _ = make_batch()
    logged = run_one_batch(model, {"source": (xs, SOURCE_LABELS), "target": (xt, torch.arange(7))})

    ref.train()
    ns = len(xs)
    _, z = forward(ref, torch.cat([xs, xt]))
    loss_cls = F.cross_entropy(z[:ns], SOURCE_LABELS)
    ent, conf = row_entropy(z[ns:]).mean(), mcc(z[ns:])
    loss = loss_cls + w_ent * ent + w_mcc * conf
    opt = replay_step(ref, loss, lr_mult, ["backbone", "bottleneck", "classifier"])

    assert_close_logs(logged, {"train/loss": loss, "train/loss_cls": loss_cls, "train/loss_transfer": 0.0,
                               "train/loss_entropy": ent, "train/loss_mcc": conf,
                               "train/source_acc": (z[:ns].argmax(1) == SOURCE_LABELS).float().mean()})
    assert_same_state(model, ref)
    assert_same_optimizer(model, opt)
