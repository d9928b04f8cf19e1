"""MCD: the whole-step test: one batch through Lightning (all optimiser steps of that batch: A, B, then C
``num_k`` times) against the plain-torch replay of :mod:`step_replay.bi_classifier` on deep copies of
the modules taken before the step (float64, with G and the heads optimised differently). Each of the three steps updates exactly the parameters it should, and the method
trains through run.py's composition.
"""

import copy
from functools import partial

import pytest
import torch

from conftest import QUICK, changed, make_cfg, snapshot
from lightning_da.methods import MCD
from lightning_da.models import build_backbone
from lightning_da.train import train
from step_replay import TinyBackbone, assert_same_state, changed_any, run_one_batch
from step_replay.bi_classifier import (ATOL, EXTRA, NUM_CLASSES, RTOL, check_logs, check_lrs_after_one_batch,
                                       common_kwargs, excess, replay, subset_batch)


# ---------------------------------------------------------------------------------------------- whole step
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("domain_forward,num_k,extra", [("joint", 3, EXTRA), ("separate", 2, {}),
                                                        ("separate", 3, EXTRA)],
                         ids=["joint-extra", "separate", "separate-extra"])
def test_mcd_step_matches_replay(domain_forward, num_k, extra):
    torch.manual_seed(0)
    w_dis = 0.7
    model = MCD(TinyBackbone(), NUM_CLASSES, num_k=num_k, w_dis=w_dis, domain_forward=domain_forward,
                **common_kwargs(extra_losses=extra or None)).double()
    ref = copy.deepcopy(model)
    before = copy.deepcopy(model)
    b = subset_batch()
    logged = run_one_batch(model, b)

    expected = replay(ref, b, domain_forward=domain_forward, num_k=num_k, w_dis=w_dis, extra=extra)
    check_logs(logged, expected)
    assert_same_state(model, ref, rtol=RTOL, atol=ATOL)
    check_lrs_after_one_batch(model)
    for prefix in ("backbone", "bottleneck", "classifier", "classifier2"):
        assert changed_any(model, before, prefix), prefix
    if extra:  # the extra terms visibly matter
        no_extra = copy.deepcopy(before)
        replay(no_extra, b, domain_forward=domain_forward, num_k=num_k, w_dis=w_dis, extra={})
        assert excess(model, no_extra) > 10


# ---------------------------------------------------------------------------------------------- the steps
def make_mcd(**kw):
    torch.manual_seed(0)
    model = MCD(build_backbone("lenet"), 10, optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9),
                bottleneck={"dim": 64}, head={"hidden": [32], "dropout": 0.0}, num_k=2, **kw)
    model.manual_backward = lambda loss: loss.backward()  # no trainer in these unit tests
    model.configure_optimizers()  # the named groups G and F that the steps update
    batch = {"source": (torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))),
             "target": (torch.randn(8, 1, 28, 28), torch.arange(8))}
    return model, batch


@pytest.mark.parametrize("step,expected", [("a", {"backbone", "bottleneck", "classifier", "classifier2"}),
                                           ("b", {"classifier", "classifier2"}),
                                           ("c", {"backbone", "bottleneck"})])
@pytest.mark.parametrize("domain_forward", ["joint", "separate"])
def test_each_step_updates_exactly_its_parameters(step, expected, domain_forward):
    model, batch = make_mcd(domain_forward=domain_forward)
    before = snapshot(model)
    if step == "a":
        model.step_a(batch)
    elif step == "b":
        model.step_b(batch)
    else:
        model.step_c(batch)
    assert changed(model, before) == expected


def test_step_b_maximises_and_step_c_minimises_the_discrepancy():
    from lightning_da.losses.bi_classifier import classifier_discrepancy

    model, batch = make_mcd()
    model.eval()  # deterministic forward to compare before/after
    xs, xt = batch["source"][0], batch["target"][0]

    def disc():
        with torch.no_grad():
            _, z1, z2 = model.forward_heads(xs, xt)
            return classifier_discrepancy(z1[8:], z2[8:]).item()

    d0 = disc()
    model.step_b(batch)
    d1 = disc()
    model.step_c(batch)
    assert d1 > d0 and disc() < d1


def test_prediction_sums_the_heads():
    model, *_ = make_mcd()
    model.eval()
    x = torch.randn(3, 1, 28, 28)
    f = model.features(x)
    torch.testing.assert_close(model(x), model.classifier(f) + model.classifier2(f))


def test_unknown_lr_mult_name_is_refused():
    model, *_ = make_mcd()
    model.lr_mult = {"discriminator": 10.0}
    with pytest.raises(ValueError, match="unknown modules"):
        model.configure_optimizers()


@pytest.mark.slow
def test_mcd_trains_through_run_py(tmp_path):
    res = train(make_cfg(tmp_path, ["method=mcd", "method.bottleneck.dim=128", "method.head.hidden=[64]", *QUICK,
                                    "+method.extra_losses.entropy=0.1", "trainer.precision=bf16-mixed",
                                    "method.domain_forward=separate"]))
    assert res["steps"] == 4 * 7  # optimiser steps per batch: 2 in A (G and heads), 1 in B, num_k=4 in C
    assert 0 <= res["last"]["test/target_acc"] <= 1 and 0 <= res["best"]["test/target_acc"] <= 1


def test_separate_domain_forward_normalises_each_domain_on_its_own():
    torch.manual_seed(0)
    model = MCD(build_backbone("lenet_bn", input_size=32), 10, optimizer=partial(torch.optim.SGD, lr=0.1),
                bottleneck={"dim": 0}, head={"hidden": [32], "batch_norm": True, "dropout": 0.0},
                domain_forward="separate")
    xs, xt = torch.randn(8, 1, 32, 32), 3 * torch.randn(8, 1, 32, 32) + 1
    with torch.no_grad():  # train mode: BatchNorm uses the statistics of the batch it is given
        f, z1, z2 = model.forward_heads(xs, xt)
        for x, rows in ((xs, slice(0, 8)), (xt, slice(8, 16))):
            torch.testing.assert_close(f[rows], model.features(x))
            torch.testing.assert_close(z1[rows], model.classifier(model.features(x)))
            torch.testing.assert_close(z2[rows], model.classifier2(model.features(x)))
        model.domain_forward = "joint"
        _, joint1, _ = model.forward_heads(xs, xt)
    assert not torch.allclose(joint1[:8], z1[:8], atol=1e-3)  # the joint forward mixes the statistics


def test_separate_domain_forward_refuses_domain_aware_norm_and_unknown_modes():
    from lightning_da.norm import DomainSplitError, convert_norm

    with pytest.raises(DomainSplitError, match="domain_forward=separate"):
        MCD(build_backbone("lenet_bn", input_size=32), 10, optimizer=torch.optim.SGD,
            norm=partial(convert_norm, kind="dsbn"), domain_forward="separate")
    with pytest.raises(ValueError, match="'joint' or 'separate'"):
        MCD(build_backbone("lenet"), 10, optimizer=torch.optim.SGD, domain_forward="split")


@pytest.mark.parametrize("domain_forward", ["joint", "separate"])
def test_separate_forward_skips_the_domain_a_step_does_not_use(domain_forward):
    """Saito's solver: step A sees only the source, step C only the target. A NaN domain that a step
    does not use must leave the parameters finite; the joint forward (CGDM's code) does use it."""
    model, batch = make_mcd(domain_forward=domain_forward)
    xs, ys = batch["source"]
    xt, idx = batch["target"]
    model.step_c({"source": (torch.full_like(xs, float("nan")), ys), "target": (xt, idx)})
    model.step_a({"source": (xs, ys), "target": (torch.full_like(xt, float("nan")), idx)})
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    assert finite == (domain_forward == "separate")
