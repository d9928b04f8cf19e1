"""Result records: one small committed JSON file per finished benchmark run ("results as data").

A run of the grid (``benchmarks.digits_grid --record BENCHMARK``) writes, as soon as it finishes,

    results/<benchmark>/<experiment>/<task>/seed<k>.json

in the repository, from the run's ``results.json``. A record holds what the run summary prints and
what is needed to redo and compare it, nothing heavier (no checkpoints, no step logs):

* ``metrics``: target accuracy and mean-class accuracy of the last checkpoint; of the best one by the
  run's monitor (its name, value and epoch); the oracle epoch (best ``val/target_acc``); steps and epochs;
* ``val_per_epoch``: per validation epoch, ``val/target_acc`` and ``val/source_acc`` (where logged);
* ``overrides`` (the Hydra overrides that define the run, without its output folder and resume
  checkpoint), ``command`` (the exact command line of its first sitting) and ``cwd``;
* ``git_commit`` when the run's last sitting started (and ``git_dirty``: tracked files differed from it), ``versions`` (lightning-da,
  torch, lightning), ``wall_time_s`` (the run's last sitting, from ``results.json``), ``sittings``
  (how many times the grid started it) and ``machine`` (CPU model, logical CPUs, threads per run);
* ``source: "run"`` (a number a run wrote, as opposed to one copied from a paper).

Records are the data every results table is built from; :func:`load_records` reads them back and
``python -m benchmarks.records BENCHMARK`` prints a table of them (mean ± std over seeds, in %).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import platform
import shlex
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
#: overrides that say where a run writes or resumes from, not what it runs (kept out of ``overrides``)
LOCATION_KEYS = ("hydra.run.dir=", "ckpt_path=")


def record_path(benchmark: str, experiment: str, task: str, seed: int, root: Path | None = None,
                split: int | None = None, folder: str | None = None) -> Path:
    """``results/<benchmark>/<folder or experiment>/<task>/seed<k>.json`` (``split<k>.json`` for a data split)."""
    name = f"split{split}.json" if split is not None else f"seed{seed}.json"
    return (root or RESULTS) / benchmark / (folder or experiment) / task / name


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine(threads: int | None = None) -> dict[str, Any]:
    """CPU model, logical CPU count and the threads a run was given."""
    model = platform.processor() or None
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "logical_cpus": os.cpu_count(), "threads_per_run": threads, "platform": platform.platform()}


def _pick(part: dict | None, *keys: str) -> dict | None:
    if not part:
        return None
    return {k.split("/", 1)[-1]: part[k] for k in keys if k in part}


def metrics(results: dict) -> dict[str, Any]:
    """The numbers of a run's ``results.json`` that its summary prints."""
    acc = ("test/target_acc", "test/target_acc_mean_class")
    out: dict[str, Any] = {"steps": results.get("steps"), "epochs": results.get("epochs"), "last": _pick(results.get("last"), *acc)}
    best = results.get("best")
    if best:
        out["best"] = {"monitor": best.get("monitor"), "monitor_value": best.get("monitor_value"),
                       "epoch": best.get("epoch"), "oracle": best.get("oracle"), **_pick(best, *acc)}
    oracle = results.get("oracle")
    if oracle:
        out["oracle"] = {"epoch": oracle.get("epoch"), "target_acc": oracle.get("val/target_acc")}
    return out


def code_state() -> dict[str, Any]:
    """The commit the repository is at and whether tracked files differ from it (result records excluded)."""
    return {"git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"))}


def build_record(results: dict, *, benchmark: str, experiment: str, task: str, seed: int, command: list[str],
                 threads: int | None = None, sittings: int = 1, code: dict | None = None,
                 split: int | None = None) -> dict[str, Any]:
    """The record of a run (module docstring); ``code``: :func:`code_state` when the run started (default: now)."""
    per_epoch = [{"epoch": row.get("epoch"), **{k.split("/", 1)[1]: row[k] for k in ("val/target_acc", "val/source_acc")
                                                 if k in row}} for row in results.get("history", [])]
    return {
        "source": "run",
        "benchmark": benchmark, "experiment": experiment, "task": task, "seed": seed,
        "method": results.get("method"), "task_domains": results.get("task"),
        "metrics": metrics(results),
        "val_per_epoch": per_epoch,
        "overrides": [a for a in command[2:] if not a.startswith(LOCATION_KEYS)],
        "command": shlex.join(command), "cwd": str(ROOT),
        **(code or code_state()),
        "versions": {"lightning-da": _version("lightning-da"), "torch": _version("torch"),
                     "lightning": _version("lightning")},
        "wall_time_s": results.get("wall_time_s"), "sittings": sittings,
        "machine": machine(threads),
        **({"split": split} if split is not None else {}),
    }


def write_record(run_dir: Path, *, benchmark: str, experiment: str, task: str, seed: int, command: list[str],
                 threads: int | None = None, sittings: int = 1, code: dict | None = None, root: Path | None = None,
                 split: int | None = None, folder: str | None = None) -> Path:
    """Write the record of the finished run in ``run_dir`` (its ``results.json``); returns its path.
    ``split``: the run is one data split (heterogeneous DA); ``folder``: its folder instead of the experiment's."""
    results = json.loads((Path(run_dir) / "results.json").read_text())
    rec = build_record(results, benchmark=benchmark, experiment=experiment, task=task, seed=seed, command=command,
                       threads=threads, sittings=sittings, code=code, split=split)
    path = record_path(benchmark, experiment, task, seed, root, split=split, folder=folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rec, indent=1) + "\n")
    tmp.replace(path)  # a reader never sees half a record
    return path


def load_records(benchmark: str, root: Path | None = None) -> list[dict]:
    """Every record of ``benchmark``, sorted by experiment, task and seed."""
    # <experiment>/<task>/seed<k>.json, where an experiment's name may hold a "/" (digits_tllib/dann)
    recs = [json.loads(p.read_text()) for p in sorted(((root or RESULTS) / benchmark).rglob("seed*.json"))]
    return sorted(recs, key=lambda r: (r["experiment"], r["task"], r["seed"]))


def table(benchmark: str, root: Path | None = None) -> str:
    """A markdown table of ``benchmark``'s records: per experiment and task, the seeds and the mean ± std
    (sample std over the seeds, as lightning_da.report; %) of the last, best-by-monitor and oracle target accuracies, and the
    last accuracy per seed."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for rec in load_records(benchmark, root):
        groups.setdefault((rec["experiment"], rec["task"]), []).append(rec)

    def stat(recs, part):
        vals = [100 * r["metrics"][part]["target_acc"] for r in recs if r["metrics"].get(part)]
        if not vals:
            return "-"
        return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else f"{vals[0]:.2f}"

    lines = ["| experiment | task | seeds | last | best (monitor) | oracle | last per seed |", "|---|---|---|---|---|---|---|"]
    for (exp, task), recs in sorted(groups.items()):
        monitor = next((r["metrics"]["best"]["monitor"] for r in recs if r["metrics"].get("best")), "-")
        per_seed = " / ".join(f"{100 * r['metrics']['last']['target_acc']:.2f}" for r in recs)
        lines.append(f"| {exp} | {task} | {', '.join(str(r['seed']) for r in recs)} | {stat(recs, 'last')} | "
                     f"{stat(recs, 'best')} ({monitor}) | {stat(recs, 'oracle')} | {per_seed} |")
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Print a table of a benchmark's result records.")
    ap.add_argument("benchmark")
    print(table(ap.parse_args().benchmark))
