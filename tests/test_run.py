"""Integration: every method through run.py's config composition on small real data, bf16, resume,
2-process CPU DDP and a 2-job multirun."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException

from conftest import QUICK, ROOT, make_cfg
from lightning_da.train import lookup, train

pytestmark = pytest.mark.slow
METHODS = ["source_only", "dann", "cdan"]


def check_results(res: dict, steps: int):
    assert res["steps"] == steps
    for part in ("last", "best"):
        assert 0.0 <= res[part]["test/target_acc"] <= 1.0
        assert 0.0 <= res[part]["test/target_acc_mean_class"] <= 1.0
    assert res["best"]["monitor"] == "val/source_acc" and not res["best"]["oracle"]
    assert Path(res["output_dir"], "results.json").exists()


@pytest.mark.parametrize("method", METHODS)
def test_methods_on_bundled_digits(tmp_path, method):
    res = train(make_cfg(tmp_path, [f"method={method}", *QUICK]))
    check_results(res, 4)
    assert "val/target_acc" in res["history"][0] and res["oracle"]["epoch"] == 0
    tags = tensorboard_tags(tmp_path / "tensorboard")
    for tag in ("train/loss", "train/loss_cls", "train/loss_transfer", "val/target_acc", "val/target_acc_mean_class",
                "val/source_acc", "lr-SGD/backbone", "hp/last/target_acc", "hp/best/target_acc"):
        assert tag in tags["scalars"], tag
    assert ("train/grl_coeff" in tags["scalars"]) == (method != "source_only")
    assert tags["hparams"]


def tensorboard_tags(folder: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, hparams = set(), False
    for events in folder.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        scalars |= set(acc.Tags()["scalars"])
        hparams |= "_hparams_/session_start_info" in acc.summary_metadata
    return {"scalars": scalars, "hparams": hparams}


def test_cdan_without_entropy_and_extra_losses(tmp_path):
    cfg = make_cfg(tmp_path, ["method=cdan", "method.entropy_conditioning=false", "+method.extra_losses.entropy=0.1",
                              "+method.extra_losses.mcc=0.5", "logger=many", *QUICK])
    res = train(cfg)
    check_results(res, 4)
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]
    for name in ("train/loss_entropy", "train/loss_mcc", "train/grl_coeff", "train/loss_transfer", "lr-SGD/backbone"):
        assert name in header


@pytest.mark.parametrize("method", METHODS)
def test_methods_on_office_caltech_images(tmp_path, office_subset, method):
    cfg = make_cfg(tmp_path, [f"method={method}", "data=office_caltech10", f"data.root={office_subset}", "backbone=efficientnet_lite0",
                              "data.domain_args.transform.resize=72", "data.domain_args.transform.crop=64", "data.num_workers=0",
                              "data.pin_memory=false", "data.persistent_workers=false", "data.source_holdout=0.2",
                              "method.lr_mult.backbone=0.1", *QUICK, "data.batch_size=8"])
    res = train(cfg)
    check_results(res, 4)
    assert res["task"] == "amazon->webcam"


def test_last_is_the_final_weights_and_history_survives_testing(tmp_path):
    # monitor_mode=min makes epoch 0 the "best", so testing it restores an older callback state
    res = train(make_cfg(tmp_path, ["method=source_only", *QUICK, "data.iters_per_epoch=10", "trainer.max_epochs=3",
                                    "monitor_mode=min", "trainer.limit_val_batches=null", "trainer.limit_test_batches=null"]))
    assert [h["epoch"] for h in res["history"]] == [0, 1, 2]
    assert res["last"]["checkpoint"].endswith("final.ckpt")
    resumable = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert resumable["global_step"] == 30  # last.ckpt follows every epoch, not only improvements
    # the target evaluation split is the same for validation and test: the last test repeats epoch 2's validation
    assert res["last"]["test/target_acc"] == pytest.approx(res["history"][-1]["val/target_acc"], abs=1e-6)
    assert res["best"]["test/target_acc"] == pytest.approx(res["history"][res["best"]["epoch"]]["val/target_acc"], abs=1e-6)


def test_bf16_mixed_on_cpu(tmp_path):
    res = train(make_cfg(tmp_path, ["method=dann", "trainer.precision=bf16-mixed", *QUICK]))
    check_results(res, 4)
    assert res["precision"] == "bf16-mixed"


def test_run_log_has_no_cloud_logger_advertisement(tmp_path, caplog):
    """Lightning's trainer logs a tip to install its cloud logger; a run drops it."""
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.addHandler(caplog.handler)  # Lightning's loggers may not propagate to the root
    try:
        with caplog.at_level(logging.INFO):
            train(make_cfg(tmp_path, ["method=source_only", *QUICK]))
    finally:
        rank_zero.removeHandler(caplog.handler)
    assert "Seed set to" in caplog.text or "GPU available" in caplog.text  # Lightning's own lines still pass
    assert "litlogger" not in caplog.text


def test_logger_none_with_default_callbacks(tmp_path):
    res = train(make_cfg(tmp_path, ["method=source_only", "logger=none", *QUICK]))  # the LR monitor needs a logger: dropped
    check_results(res, 4)
    assert not (tmp_path / "tensorboard").exists()


def test_early_stopping_on_a_validator(tmp_path):
    # an improvement of 10 is impossible: epoch 0 sets the best, epoch 1 does not improve, patience 1 stops there
    res = train(make_cfg(tmp_path, ["method=source_only", *QUICK, "trainer.max_epochs=5", "monitor=val/validator/entropy",
                                    "early_stopping.patience=1", "early_stopping.min_delta=10"]))
    assert res["epochs"] == 2 and [h["epoch"] for h in res["history"]] == [0, 1]
    assert res["best"]["monitor"] == "val/validator/entropy"
    with pytest.raises(ValueError, match="monitor=null"):
        train(make_cfg(tmp_path / "b", ["method=source_only", *QUICK, "monitor=null", "early_stopping.patience=1"]))


def test_resume_continues_where_it_stopped(tmp_path):
    train(make_cfg(tmp_path / "a", ["method=dann", *QUICK]))
    last = str(tmp_path / "a" / "checkpoints" / "last.ckpt")
    res = train(make_cfg(tmp_path / "b", ["method=dann", *QUICK, "trainer.max_epochs=2", f"ckpt_path={last}"]))
    assert res["steps"] == 8 and res["epochs"] == 2
    assert [h["epoch"] for h in res["history"]] == [0, 1]  # the history of the first run came back with it


@pytest.mark.parametrize("method", [["method=dann"], ["method=cgdm", "method.num_k=1", "method.pseudo.start_epoch=0"]])
def test_resumed_run_matches_an_uninterrupted_one(tmp_path, monkeypatch, method):
    """The checkpoint carries the RNG states (dropout, augmentation): stopped after epoch 0 and resumed, a 2-epoch
    run ends with the weights of an uninterrupted one (same config, so the same schedules; CGDM: the same pseudo
    labels, refreshed at the start of epoch 1 in both)."""
    import lightning as L
    import lightning_da.train as train_module

    two = [*method, *QUICK, "trainer.max_epochs=2", "test=false"]
    train(make_cfg(tmp_path / "full", two))

    class StopAfterFirstEpoch(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            trainer.should_stop = True

    build = train_module.build

    def build_and_stop(cfg):
        datamodule, model, trainer = build(cfg)
        trainer.callbacks.append(StopAfterFirstEpoch())
        return datamodule, model, trainer

    monkeypatch.setattr(train_module, "build", build_and_stop)
    assert train(make_cfg(tmp_path / "stopped", two))["epochs"] == 1
    monkeypatch.setattr(train_module, "build", build)
    train(make_cfg(tmp_path / "resumed", [*two, f"ckpt_path={tmp_path / 'stopped' / 'checkpoints' / 'last.ckpt'}"]))
    full, resumed = (torch.load(tmp_path / d / "checkpoints" / "final.ckpt", weights_only=False)["state_dict"]
                     for d in ("full", "resumed"))
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]) if torch.is_tensor(full[k]) else full[k] == resumed[k], k


def test_monitor_without_source_split_is_refused(tmp_path, office_subset):
    cfg = make_cfg(tmp_path, ["data=office_caltech10", f"data.root={office_subset}", "data.source_holdout=0", "backbone=lenet",
                              "backbone.in_channels=3", "backbone.input_size=28", *QUICK])
    with pytest.raises(ValueError, match="source_holdout"):
        train(cfg)


def test_unknown_method_lists_available(tmp_path):
    with pytest.raises(MissingConfigException) as err:
        make_cfg(tmp_path, ["method=danish"])
    assert "dann" in str(err.value) and "cdan" in str(err.value)


def run_py(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_ddp_two_cpu_processes(tmp_path):
    out = run_py(["trainer=ddp_cpu", f"hydra.run.dir={tmp_path}", *QUICK], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["world_size"] == 2 and res["steps"] == 4
    assert 0 < res["last"]["test/target_acc"] <= 1


def test_multirun_two_jobs(tmp_path):
    out = run_py(["-m", "seed=0,1", f"hydra.sweep.dir={tmp_path}", *QUICK], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads((tmp_path / str(i) / "results.json").read_text()) for i in (0, 1)]
    assert [r["seed"] for r in results] == [0, 1]
    assert lookup(results[0], "best.monitor_value") == results[0]["best"]["monitor_value"]
    from lightning_da.report import collect, markdown, table

    rows = table(collect(tmp_path))
    assert len(rows) == 1 and rows[0]["seeds"] == "2 seeds"
    accs = [100 * r["last"]["test/target_acc"] for r in results]
    mean = sum(accs) / 2
    assert rows[0]["last"].startswith(f"{mean:.2f} ± ")
    assert "| DANN | mnist->usps | 2 seeds |" in markdown(rows)
    by_seed = table(collect(tmp_path), by=("seed", "method.trade_off"))  # keys from each run's .hydra/config.yaml
    assert [r["method"] for r in by_seed] == ["DANN seed=0 method.trade_off=1.0", "DANN seed=1 method.trade_off=1.0"]


def test_optuna_search_two_trials(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install hydra-optuna-sweeper (the [sweep] extra)")
    out = run_py(["hparams_search=dann_optuna", "hydra.sweeper.n_trials=2", f"hydra.sweep.dir={tmp_path}", *QUICK], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    results = [json.loads((tmp_path / str(i) / "results.json").read_text()) for i in (0, 1)]
    assert all(r["best"]["monitor"] == "val/validator/snd" and not r["best"]["oracle"] for r in results)
    summary = (tmp_path / "optimization_results.yaml").read_text()
    best = max(r["best"]["monitor_value"] for r in results)
    assert f"best_value: {best}" in summary and "method.trade_off" in summary
