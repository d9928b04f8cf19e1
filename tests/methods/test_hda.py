"""Whole-step tests of the HDA baselines HDANet and TargetOnly: a full batch through a real Lightning
Trainer against a plain-torch replay on deep copies (the setting of :mod:`step_replay.hda`).

    HDANet:     L = CE(z_s, y_s) + CE(z_l, y_l)
    TargetOnly: L = CE(z_l, y_l)     (optimiser: target projector and classifier only)
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from lightning_da.methods import HDANet, TargetOnly
from step_replay import OneBatchData, assert_close_logs, assert_same_state, run_one_batch
from step_replay.hda import (C, D_COMMON, D_S, D_T, LR, assert_logged_keys, hda_batch, hda_sgd, sgd_factory,
                             stepwise_result)


def one_full_batch(cls, lr_mult: dict):
    """``cls`` on the tiny HDA setting, a copy of it before the step, the batch, the unlabelled target's
    labels and what one full-batch step through Lightning logged."""
    torch.manual_seed(0)
    model = cls({"source": D_S, "target": D_T}, C, optimizer=sgd_factory, d_common=D_COMMON, init_std=None,
                lr_mult=lr_mult)
    before = copy.deepcopy(model)
    batch, yu = hda_batch(0)
    logged = run_one_batch(model, data=OneBatchData(batch, eval_batch=(batch["target"][0], yu)))
    return model, before, batch, yu, logged


def test_hda_net_step_matches_replay():
    model, before, batch, yu, logged = one_full_batch(HDANet, {"backbone": 0.5, "classifier": 1.5})

    (xs, ys), (xl, yl), (xu, _) = batch["source"], batch["target_labeled"], batch["target"]
    ref = copy.deepcopy(before)
    ref.train()
    z_s = ref.classifier(ref.backbone.projectors["source"](xs))
    z_l = ref.classifier(ref.backbone.projectors["target"](xl))
    z_u = ref.classifier(ref.backbone.projectors["target"](xu)).detach()
    loss_s, loss_l = F.cross_entropy(z_s, ys), F.cross_entropy(z_l, yl)
    loss = loss_s + loss_l
    opt = hda_sgd([{"params": list(ref.backbone.parameters()), "lr": LR * 0.5},
               {"params": list(ref.classifier.parameters()), "lr": LR * 1.5}])
    opt.zero_grad()
    loss.backward()
    opt.step()

    expected = {"train/loss": loss, "train/loss_cls": loss_s, "train/loss_target_cls": loss_l,
                "train/source_acc": (z_s.argmax(1) == ys).float().mean()}
    assert_logged_keys(logged, expected)
    assert_close_logs(logged, expected)
    assert_same_state(model, ref)
    result = stepwise_result(model)
    assert result["val/target_acc"] == pytest.approx(float((z_u.argmax(1) == yu).float().mean())) and result["step"] == 0


def test_target_only_step_matches_replay():
    model, before, batch, yu, logged = one_full_batch(TargetOnly, {"target_projector": 0.5, "classifier": 1.5})

    (xl, yl), (xu, _) = batch["target_labeled"], batch["target"]
    ref = copy.deepcopy(before)
    ref.train()
    target = ref.backbone.projectors["target"]
    z_l = ref.classifier(target(xl))
    z_u = ref.classifier(target(xu)).detach()
    loss = F.cross_entropy(z_l, yl)
    opt = hda_sgd([{"params": list(target.parameters()), "lr": LR * 0.5},
               {"params": list(ref.classifier.parameters()), "lr": LR * 1.5}])
    opt.zero_grad()
    loss.backward()
    opt.step()

    expected = {"train/loss": loss, "train/loss_target_cls": loss}
    assert_logged_keys(logged, expected)
    assert_close_logs(logged, expected)
    assert_same_state(model, ref)
    # the source projector is left alone, weight decay included, and is not in the optimiser
    for k, v in before.backbone.projectors["source"].state_dict().items():
        assert torch.equal(model.backbone.projectors["source"].state_dict()[k], v), k
    optimised = {id(p) for g in model.trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in model.backbone.projectors["source"].parameters()}
    assert optimised == {id(p) for p in [*model.backbone.projectors["target"].parameters(), *model.classifier.parameters()]}
    result = stepwise_result(model)
    assert result["val/target_acc"] == pytest.approx(float((z_u.argmax(1) == yu).float().mean())) and result["step"] == 0
