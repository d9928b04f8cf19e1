"""A few steps of each single-step method's digits experiment (``experiment=digits_<method>``) through
the Hydra app, on the real digits of ../shared/data."""

import math

import pytest

from conftest import QUICK, SHARED_DATA, make_cfg, needs_shared
from lightning_da.train import train


@pytest.mark.slow
@needs_shared(SHARED_DATA)
@pytest.mark.parametrize("name,method", [("afn", "AFN"), ("bsp", "BSP"), ("mdd", "MDD"), ("dan", "DAN"), ("jan", "JAN"),
                                         ("coral", "DeepCORAL"), ("mcc", "MCC"), ("bnm", "BNM")])
def test_digits_experiment_runs(tmp_path, name, method):
    res = train(make_cfg(tmp_path, QUICK + [f"experiment=digits_{name}", f"paths.data_dir={SHARED_DATA}"]))
    assert res["method"] == method and res["steps"] == 4
    acc = res["last"]["test/target_acc"]
    assert acc == acc and 0 <= acc <= 1  # finite


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
