"""CGDM: the pseudo-label terms enter the right steps, L_GD reaches only G in step C, the bottleneck
quirk, and training through run.py with pseudo-label refreshes."""

from functools import partial

import pytest
import torch

from conftest import QUICK, changed, make_cfg, snapshot
from lightning_da.methods import CGDM
from lightning_da.models import build_backbone
from lightning_da.pseudo_labels import PseudoLabelStore
from lightning_da.train import train


def make_cgdm(**kw):
    torch.manual_seed(0)
    model = CGDM(build_backbone("lenet"), 10, optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9),
                 generator_optimizer=partial(torch.optim.SGD, lr=0.1), bottleneck={"dim": 64},
                 head={"hidden": [32], "dropout": 0.0}, num_k=1, pseudo={"start_epoch": 0}, **kw)
    model.manual_backward = lambda loss: loss.backward()
    model.pseudo_labels = PseudoLabelStore(8, 10)
    model.pseudo_labels.replace_all(torch.arange(8) % 10)
    model._pseudo_ready = True
    model.configure_optimizers()  # the named groups G and F that the steps update
    batch = {"source": (torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))),
             "target": (torch.randn(8, 1, 28, 28), torch.arange(8))}
    return model, batch


def test_step_terms_by_step():
    model, batch = make_cgdm()
    f, z1, z2 = model.forward_heads(batch["source"][0], batch["target"][0])
    assert set(model.step_terms("A", f, z1, z2, 8, batch)[1]) == {"train/loss_entropy", "train/loss_pseudo"}
    assert set(model.step_terms("B", f, z1, z2, 8, batch)[1]) == {"train/loss_entropy"}
    assert set(model.step_terms("C", f, z1, z2, 8, batch)[1]) == {"train/loss_entropy", "train/loss_gd"}
    model._pseudo_ready = False  # before pseudo labels exist: entropy only
    assert set(model.step_terms("A", f, z1, z2, 8, batch)[1]) == {"train/loss_entropy"}


@pytest.mark.parametrize("step,expected", [("a", {"backbone", "bottleneck", "classifier", "classifier2"}),
                                           ("b", {"classifier", "classifier2"}), ("c", {"backbone", "bottleneck"})])
@pytest.mark.parametrize("domain_forward", ["joint", "separate"])
def test_each_step_updates_exactly_its_parameters(step, expected, domain_forward):
    model, batch = make_cgdm(domain_forward=domain_forward)
    before = snapshot(model)
    {"a": lambda: model.step_a(batch), "b": lambda: model.step_b(batch),
     "c": lambda: model.step_c(batch)}[step]()
    assert changed(model, before) == expected


def test_gradient_discrepancy_alone_moves_only_the_generator():
    model, batch = make_cgdm(w_ent_c=0.0)
    model.w_dis = 0.0  # step C with L_GD only
    before = snapshot(model)
    model.step_c(batch)
    assert changed(model, before) == {"backbone", "bottleneck"}


def test_untrained_bottleneck_quirk():
    model, batch = make_cgdm(train_bottleneck=False)
    before = snapshot(model)
    model.step_a(batch)
    assert changed(model, before) == {"backbone", "classifier", "classifier2"}


def test_target_without_indices_is_refused():
    model, batch = make_cgdm()
    batch["target"] = batch["target"][0]
    with pytest.raises(ValueError, match=r"\(x, idx\)"):
        model.step_a(batch)


@pytest.mark.slow
def test_cgdm_trains_and_refreshes_pseudo_labels(tmp_path):
    res = train(make_cfg(tmp_path, ["method=cgdm", "method.bottleneck.dim=64", "method.head.hidden=[32]", "method.num_k=1",
                                    "method.pseudo.start_epoch=0", "method.pseudo.interval=2", *QUICK,
                                    "trainer.max_epochs=2", "logger=csv"]))
    assert res["steps"] == 2 * 4 * 4  # optimiser steps: A steps G and the heads, B the heads, C G (num_k=1)
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss_gd" in header and "train/loss_pseudo" in header
