"""The results-grid runner (benchmarks/digits_grid) skips finished runs, resumes stopped ones from their
last checkpoint and gives each run the requested CPU threads; no training is run here."""

import argparse

from benchmarks import digits_grid


def args(tmp_path, threads=1):
    return argparse.Namespace(out=str(tmp_path), data="DATA", overrides=["optimizer.lr=0.1"], threads=threads)


def test_grid_runs_resume_from_last_checkpoint_with_the_requested_threads(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(digits_grid.subprocess, "call", lambda cmd, **kw: calls.append((cmd, kw["env"])) or 0)
    run_dir = tmp_path / "dann_tllib_u2m" / "seed1"

    assert digits_grid.run_one(("dann_tllib", "u2m", 1), args(tmp_path)).startswith("done")
    cmd, env = calls[-1]
    assert cmd[2:] == ["experiment=digits_dann_tllib", "task=u2m", "seed=1", "paths.data_dir=DATA",
                       f"hydra.run.dir={run_dir}", "optimizer.lr=0.1"]          # a fresh run: no ckpt_path
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"

    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    digits_grid.run_one(("dann_tllib", "u2m", 1), args(tmp_path, threads=2))
    cmd, env = calls[-1]
    assert cmd[-1] == f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}" and env["OMP_NUM_THREADS"] == "2"

    (run_dir / "results.json").write_text("{}")
    assert digits_grid.run_one(("dann_tllib", "u2m", 1), args(tmp_path)).startswith("skip") and len(calls) == 2
