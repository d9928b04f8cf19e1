"""The results-grid runner (benchmarks/digits_grid) skips finished runs, resumes stopped ones from their
last checkpoint and gives each run the requested CPU threads; no training is run here."""

import argparse
import json

from benchmarks import digits_grid, records


def args(tmp_path, threads=1):
    return argparse.Namespace(out=str(tmp_path), data="DATA", overrides=["optimizer.lr=0.1"], threads=threads)


def test_grid_runs_resume_from_last_checkpoint_with_the_requested_threads(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(digits_grid.subprocess, "call", lambda cmd, **kw: calls.append((cmd, kw["env"])) or 0)
    run_dir = tmp_path / "dann_tllib_u2m" / "seed1"

    assert digits_grid.run_one(("dann_tllib", "u2m", 1), args(tmp_path)).startswith("done")
    cmd, env = calls[-1]
    assert cmd[2:] == ["experiment=digits_tllib/dann", "task=u2m", "seed=1", "paths.data_dir=DATA",
                       f"hydra.run.dir={run_dir}", "optimizer.lr=0.1"]          # a fresh run: no ckpt_path
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"

    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    digits_grid.run_one(("dann_tllib", "u2m", 1), args(tmp_path, threads=2))
    cmd, env = calls[-1]
    assert cmd[-1] == f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}" and env["OMP_NUM_THREADS"] == "2"

    (run_dir / "results.json").write_text("{}")
    assert digits_grid.run_one(("dann_tllib", "u2m", 1), args(tmp_path)).startswith("skip") and len(calls) == 2


FAKE_RESULTS = {
    "method": "DAN", "task": "mnist->usps", "seed": 2, "epochs": 10, "steps": 5000, "wall_time_s": 312.5,
    "last": {"checkpoint": "x/final.ckpt", "test/target_acc": 0.91, "test/target_acc_mean_class": 0.9,
             "test/source_acc": 0.99},
    "best": {"monitor": "val/source_acc", "oracle": False, "monitor_value": 0.992, "epoch": 7, "checkpoint": "x/b.ckpt",
             "test/target_acc": 0.905, "test/target_acc_mean_class": 0.899},
    "oracle": {"note": "...", "epoch": 8, "val/target_acc": 0.93},
    "history": [{"epoch": e, "step": 500 * (e + 1), "val/target_acc": (80 + e) / 100, "val/source_acc": 0.98,
                 "val/target_acc_mean_class": 0.7} for e in range(10)],
}


def test_grid_writes_a_result_record_when_a_run_finishes(tmp_path, monkeypatch):
    """--record: each finished run leaves results/<benchmark>/<experiment>/<task>/seed<k>.json with its metrics,
    overrides, command, commit, versions and machine; an already finished run gets one if it has none."""
    import json

    from benchmarks import records

    monkeypatch.setattr(records, "RESULTS", tmp_path / "results")
    run_dir = tmp_path / "out" / "dan_tllib_m2u" / "seed2"

    def fake_run(cmd, **kw):  # the run writes its results.json and exits 0
        (run_dir / "results.json").write_text(json.dumps(FAKE_RESULTS))
        return 0

    monkeypatch.setattr(digits_grid.subprocess, "call", fake_run)
    a = argparse.Namespace(out=str(tmp_path / "out"), data="DATA", overrides=["data.batch_size=32"], threads=1,
                           record="digits_tllib_equal_budget")
    line = digits_grid.run_one(("dan_tllib", "m2u", 2), a)
    path = tmp_path / "results" / "digits_tllib_equal_budget" / "digits_tllib" / "dan" / "m2u" / "seed2.json"
    assert line.startswith("done") and str(path) in line
    rec = json.loads(path.read_text())
    assert rec["source"] == "run" and (rec["experiment"], rec["task"], rec["seed"]) == ("digits_tllib/dan", "m2u", 2)
    m = rec["metrics"]
    assert m["last"] == {"target_acc": 0.91, "target_acc_mean_class": 0.9} and (m["steps"], m["epochs"]) == (5000, 10)
    assert m["best"] == {"monitor": "val/source_acc", "monitor_value": 0.992, "epoch": 7, "oracle": False,
                         "target_acc": 0.905, "target_acc_mean_class": 0.899}
    assert m["oracle"] == {"epoch": 8, "target_acc": 0.93}
    assert rec["val_per_epoch"][3] == {"epoch": 3, "target_acc": 0.83, "source_acc": 0.98}
    assert rec["overrides"] == ["experiment=digits_tllib/dan", "task=m2u", "seed=2", "paths.data_dir=DATA",
                                "data.batch_size=32"]                 # not the output folder
    assert f"hydra.run.dir={run_dir}" in rec["command"] and rec["command"].split()[1].endswith("run.py")
    assert len(rec["git_commit"]) == 40 and set(rec["versions"]) == {"lightning-da", "torch", "lightning"}
    assert rec["versions"]["torch"] and rec["machine"]["threads_per_run"] == 1 and rec["machine"]["logical_cpus"] >= 1
    assert rec["wall_time_s"] == 312.5 and rec["sittings"] == 1
    assert len(path.read_bytes()) < 8000                              # a few KB: no history beyond val accuracies
    assert records.load_records("digits_tllib_equal_budget")[0]["metrics"] == m

    path.unlink()                                                     # a finished run without its record gets one
    assert "record" in digits_grid.run_one(("dan_tllib", "m2u", 2), a) and path.exists()
    assert "record" not in digits_grid.run_one(("dan_tllib", "m2u", 2), a)   # and only once


def test_records_table_gives_mean_and_std_over_seeds(tmp_path):
    import json

    from benchmarks import records

    for seed, (last, best, oracle) in enumerate([(0.90, 0.89, 0.92), (0.92, 0.91, 0.94)]):
        res = {**FAKE_RESULTS, "seed": seed, "last": {"test/target_acc": last, "test/target_acc_mean_class": last},
               "best": {**FAKE_RESULTS["best"], "test/target_acc": best}, "oracle": {"epoch": 3, "val/target_acc": oracle}}
        (tmp_path / f"r{seed}").mkdir()
        (tmp_path / f"r{seed}" / "results.json").write_text(json.dumps(res))
        records.write_record(tmp_path / f"r{seed}", benchmark="b", experiment="digits_dan_tllib", task="m2u", seed=seed,
                             command=["python", "run.py", "experiment=digits_tllib/dan"], root=tmp_path / "results")
    row = records.table("b", root=tmp_path / "results").splitlines()[-1]
    assert row == ("| digits_dan_tllib | m2u | 0, 1 | 91.00 ± 1.41 | 90.00 ± 1.41 (val/source_acc) | 93.00 ± 1.41 | "
                   "90.00 / 92.00 |")


def test_hda_grid_records_each_split_as_the_committed_hda_records(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from benchmarks import hda_partitions

    monkeypatch.setattr(records, "RESULTS", tmp_path / "results")
    run_dir = tmp_path / "out" / "target_only_c2d" / "split3"
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps({
        "method": "TargetOnly", "seed": 2020, "steps": 3000, "epochs": 1, "wall_time_s": 1.0,
        "last": {"test/target_acc": 0.9, "test/target_acc_mean_class": 0.89},
        "oracle": {"val/target_acc": 0.95, "epoch": None}}))
    args = SimpleNamespace(record="hda", data="DATA", overrides=[], threads=1)
    path = hda_partitions.record_split("target_only", "c2d", 3, run_dir, args)
    assert path == tmp_path / "results" / "hda" / "target_only" / "surf_decaf_c2d" / "split3.json"
    rec = json.loads(path.read_text())
    assert (rec["experiment"], rec["task"], rec["seed"], rec["split"]) == ("hda/ssan", "surf_decaf_c2d", 2020, 3)
    assert rec["metrics"]["last"]["target_acc"] == 0.9 and rec["metrics"]["oracle"]["target_acc"] == 0.95
    assert rec["overrides"][:4] == ["experiment=hda/ssan", "task=surf_decaf_c2d", "method=target_only", "data.split=3"]
