"""FixMatch (Sohn et al. 2020, TLlib's ConfidenceBasedSelfTrainingLoss): the whole step against a
plain-torch replay on deep copies, and a few steps of the FixMatch / source-only experiment configs
on real digits and Office-Caltech10 images.

The replay: pseudo labels from the weak view (``[x_s; x_weak]`` forwarded in train mode without
gradient, which moves the BatchNorm running statistics too), ``L = CE + trade_off * mean_i
1[max p_i(weak) > tau] CE(z_i(strong), y_hat_i) + sum_k w_k L_k(z_strong)`` (``>=`` when not strict).
With SGD (momentum, weight decay, per-module learning rates) and the ``inv`` schedule, the test
compares every logged term, the whole state_dict and the optimiser's state.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import FEW, SMALL_IMAGES, make_cfg
from lightning_da.methods import FixMatch
from lightning_da.train import train
from step_replay import (BOTTLENECK, SOURCE_LABELS, TinyBackbone, assert_close_logs, assert_same_optimizer,
                         assert_same_state, forward, make_batch, replay_step, row_entropy, run_one_batch, scheduler,
                         sgd)


def bnm(z: torch.Tensor) -> torch.Tensor:
    """Batch nuclear-norm maximisation as its official code: -mean singular value of P."""
    return -torch.linalg.svdvals(z.softmax(1)).mean()


def fixmatch_batch():
    xs, x_weak, g = make_batch(1)
    x_strong = x_weak * 0.6 + torch.randn(7, 6, generator=g) * 0.8  # a distinct view of the same rows
    return xs, x_weak, x_strong


def build_fixmatch(threshold: float, strict: bool, trade_off: float, lr_mult: dict, extra: dict) -> FixMatch:
    torch.manual_seed(0)
    return FixMatch(TinyBackbone(), 3, sgd(), scheduler(), bottleneck=BOTTLENECK, lr_mult=lr_mult,
                    extra_losses=extra, trade_off=trade_off, threshold=threshold, strict=strict)


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "non_strict"])
def test_fixmatch_step_matches_replay(strict):
    trade_off, w_ent, w_bnm = 0.6, 0.35, 0.15
    lr_mult = {"backbone": 0.5, "bottleneck": 1.5, "classifier": 2.5}
    extra = {"entropy": w_ent, "bnm": w_bnm}
    xs, x_weak, x_strong = fixmatch_batch()
    ns, nt = len(xs), len(x_weak)

    # the threshold is set exactly at one weak-view confidence (the 4th highest), so strict (>) and
    # non-strict (>=) masks differ on that row
    probe = copy.deepcopy(build_fixmatch(0.5, strict, trade_off, lr_mult, extra)).train()
    with torch.no_grad():
        conf0 = forward(probe, torch.cat([xs, x_weak]))[1][ns:].softmax(1).max(1).values
    tau = float(conf0.sort(descending=True).values[3])

    model = build_fixmatch(tau, strict, trade_off, lr_mult, extra)
    ref = copy.deepcopy(model)
    logged = run_one_batch(model, {"source": (xs, SOURCE_LABELS), "target": ((x_weak, x_strong), torch.arange(nt))})

    ref.train()
    with torch.no_grad():  # the weak pass, in train mode: it moves the BN running statistics too
        p_weak = forward(ref, torch.cat([xs, x_weak]))[1][ns:].softmax(1)
    _, z = forward(ref, torch.cat([xs, x_strong]))
    loss_cls = F.cross_entropy(z[:ns], SOURCE_LABELS)
    conf, pseudo = p_weak.max(1)
    mask = conf > tau if strict else conf >= tau
    assert 0 < int(mask.sum()) < nt, f"the mask must be mixed on this batch: {mask.tolist()}"
    assert int(mask.sum()) == (3 if strict else 4)
    # the views disagree, so pseudo labels or masks from the strong view would show
    assert not torch.equal(pseudo, z[ns:].argmax(1))
    z_t = z[ns:]
    loss_fm = (F.cross_entropy(z_t, pseudo, reduction="none") * mask.float()).sum() / nt
    ent, nuc = row_entropy(z_t).mean(), bnm(z_t)
    loss = loss_cls + trade_off * loss_fm + w_ent * ent + w_bnm * nuc
    opt = replay_step(ref, loss, lr_mult, ["backbone", "bottleneck", "classifier"])

    assert_close_logs(logged, {"train/loss": loss, "train/loss_cls": loss_cls, "train/loss_transfer": loss_fm,
                               "train/loss_entropy": ent, "train/loss_bnm": nuc,
                               "train/pseudo_label_ratio": mask.float().mean(),
                               "train/source_acc": (z[:ns].argmax(1) == SOURCE_LABELS).float().mean()})
    assert_same_state(model, ref)
    assert_same_optimizer(model, opt)


# ---------------------------------------------------------------------------- through the Hydra app
def test_fixmatch_digits_experiment(tmp_path):
    res = train(make_cfg(tmp_path, ["experiment=digits/fixmatch", "data=digits_bundled", *FEW]))
    assert res["method"] == "FixMatch" and res["steps"] == 2 and 0 <= res["last"]["test/target_acc"] <= 1


@pytest.mark.parametrize("experiment", ["fixmatch_office_caltech", "office_caltech_source_only"])
def test_office_caltech_experiments(tmp_path, office_subset, experiment):
    res = train(make_cfg(tmp_path, [f"experiment={experiment}", f"data.root={office_subset}", *SMALL_IMAGES, *FEW]))
    assert res["steps"] == 2 and 0 <= res["last"]["test/target_acc"] <= 1


def test_fixmatch_with_domain_aware_norm(tmp_path):
    res = train(make_cfg(tmp_path, ["experiment=digits/fixmatch", "data=digits_bundled", "backbone=lenet_bn",
                                    "norm=dsbn", *FEW]))
    assert res["steps"] == 2
