"""Sweeps beyond one process: the launcher configs compose with their documented resources, and a
2-job sweep runs through joblib (hydra/launcher=parallel) and through submitit's local executor."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, make_cfg

QUICK_SWEEP = ["trainer.max_epochs=1", "data.iters_per_epoch=3", "data.batch_size=16", "trainer.enable_progress_bar=false",
               "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2", "callbacks=none", "logger=csv"]


def test_launcher_configs_compose_with_their_resources(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[launchers]'")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[launchers]'")
    cfg = make_cfg(tmp_path, ["hydra/launcher=parallel", "hydra.launcher.n_jobs=4", "threads=3"])
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert (cfg.hydra.launcher.n_jobs, cfg.threads) == (4, 3)
    slurm = make_cfg(tmp_path, ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=16", "hydra.launcher.partition=gpu"])
    launcher = slurm.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert (launcher.timeout_min, launcher.gpus_per_node, launcher.tasks_per_node, launcher.mem_gb) == (240, 1, 1, 32)
    assert slurm.threads == 16 and dict(slurm.hydra.job.env_set) == {"OMP_NUM_THREADS": "16", "MKL_NUM_THREADS": "16"}
    local = make_cfg(tmp_path, ["hydra/launcher=local_submitit"])
    assert local.hydra.launcher._target_.endswith("LocalLauncher") and local.threads == 1
    plain = make_cfg(tmp_path, [])
    assert "threads" not in plain and plain.hydra.launcher._target_.endswith("BasicLauncher")


def sweep(tmp_path, launcher: str, extra: list[str]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", f"hydra/launcher={launcher}", "seed=0,1",
                          f"hydra.sweep.dir={tmp_path}", *extra, *QUICK_SWEEP],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads((tmp_path / str(i) / "results.json").read_text()) for i in (0, 1)]


@pytest.mark.slow
def test_two_job_sweep_through_joblib(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e '.[launchers]'")
    results = sweep(tmp_path, "parallel", ["threads=1"])
    assert [r["seed"] for r in results] == [0, 1]
    assert all(r["threads"] == 1 and r["steps"] == 3 and 0 <= r["last"]["test/target_acc"] <= 1 for r in results)
    assert all((tmp_path / str(i) / "model_card.md").exists() and (tmp_path / str(i) / "checkpoints" / "final.ckpt").exists()
               for i in (0, 1))


@pytest.mark.slow
def test_two_job_sweep_through_submitit_local(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[launchers]'")
    results = sweep(tmp_path, "local_submitit", ["hydra.launcher.timeout_min=15"])
    assert [r["seed"] for r in results] == [0, 1] and all(r["threads"] == 1 for r in results)
    assert list((tmp_path / ".submitit").iterdir())  # submitit's own job folders
