"""Run heterogeneous-DA tasks over N labelled-target splits (SSAN's "partitions") and report the
mean and sample std of the last-step accuracy and of the best-over-training accuracy (ORACLE: selected
with target labels, what the SSAN paper reported).

    python -m benchmarks.hda_partitions --out bench_out/hda [--methods ssan hda_net target_only] \
        [--tasks c2d c2w a2d a2w d2d d2w w2d w2w] [--splits 20 | --split-ids 0 5] [--data ../shared/data] \
        [--report] [-- extra overrides, e.g. data.steps_per_epoch=1000]

Each (method, task, split) is one :func:`lightning_da.train.train` call in this process (the
library's Lightning path, full-batch DataModule), composed from ``conf/`` like ``run.py`` as
``experiment=hda/ssan task=surf_decaf_<t> method=<method> data.split=<i>``, written to
``<out>/<method>_<task>/split<i>/results.json``; its checkpoints are deleted afterwards. A split
whose results.json exists is skipped, so the grid can be spread over several sittings.
``--report`` only aggregates what is there (``<out>/summary.json`` and a table). ``--record BENCHMARK``
writes each finished split's result record (``benchmarks.records``) as
``results/BENCHMARK/<hda/ssan or the baseline method>/<task>/split<i>.json``, the layout of the
committed HDA records.

Tasks: the 8 SURF -> DeCAF6 tasks of ``conf/task/surf_decaf_*.yaml`` (pre-drawn splits of the
DeCAF6 files) and SURF -> GoogLeNet tasks ``<s>2<t>_googlenet`` (random 3 per class per split).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import time
from pathlib import Path

LETTER = {"a": "amazon", "c": "caltech", "d": "dslr", "w": "webcam"}
DECAF_TASKS = ["c2d", "c2w", "a2d", "a2w", "d2d", "d2w", "w2d", "w2w"]
#: SURF -> DeCAF6: one experiment, the task from conf/task/surf_decaf_<t>.yaml
TASKS = {t: ["experiment=hda/ssan", f"task=surf_decaf_{t}"] for t in DECAF_TASKS}
TASKS.update({f"{s}2{t}_googlenet": ["experiment=hda/ssan_googlenet", f"data.source={LETTER[s]}_surf",
                                     f"data.target={LETTER[t]}_googlenet"] for s in "acdw" for t in "adw"})
#: CDSPP (Pattern Recognition 2022) Table 3, SURF -> DeCAF6: SSAN as re-run by CDSPP (last
#: iteration), STN, CDSPP
PUBLISHED = {"SSAN (CDSPP re-run)": [95.8, 94.2, 93.1, 93.1, 93.9, 82.6, 93.5, 95.0],
             "STN": [94.4, 92.8, 95.0, 93.9, 94.4, 93.3, 93.9, 92.2],
             "CDSPP": [95.6, 94.1, 95.7, 94.6, 93.5, 94.7, 95.7, 94.3]}


def split_overrides(method: str, task: str, split: int, args) -> list[str]:
    return [*TASKS[task], f"method={method}", f"data.split={split}", f"paths.data_dir={args.data}",
            "logger=none", "callbacks=none", *args.overrides]


def run_split(method: str, task: str, split: int, args) -> Path:
    from lightning_da.train import compose_config, train

    run_dir = Path(args.out).resolve() / f"{method}_{task}" / f"split{split}"
    if not (run_dir / "results.json").exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        train(compose_config(split_overrides(method, task, split, args), run_dir))
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        print(f"done {method} {task} split {split} in {time.time() - t0:.0f} s", flush=True)
    if getattr(args, "record", None):
        record_split(method, task, split, run_dir, args)
    return run_dir


def record_split(method: str, task: str, split: int, run_dir: Path, args) -> Path:
    """The split's result record (written once), named as the committed HDA records are."""
    from benchmarks import records

    experiment = TASKS[task][0].split("=", 1)[1]
    data_task = TASKS[task][1].split("=", 1)[1] if TASKS[task][1].startswith("task=") else task
    folder = experiment if method == "ssan" else method
    path = records.record_path(args.record, experiment, data_task, 0, split=split, folder=folder)
    if not path.exists():
        seed = json.loads((run_dir / "results.json").read_text()).get("seed", 0)
        command = ["python", "run.py", *split_overrides(method, task, split, args)]
        records.write_record(run_dir, benchmark=args.record, experiment=experiment, task=data_task, seed=seed,
                             command=command, threads=args.threads, split=split, folder=folder)
    return path


def _stats(values: list[float]) -> dict:
    return {"mean": 100 * statistics.fmean(values), "std": 100 * statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarise(out: Path) -> dict:
    summary = {}
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        rows = [json.loads(f.read_text()) for f in sorted(folder.glob("split*/results.json"))]
        if not rows:
            continue
        last = [r["last"]["test/target_acc"] for r in rows]
        oracle = [r["oracle"]["val/target_acc"] for r in rows if "oracle" in r]
        summary[folder.name] = {"last": _stats(last), "oracle_best": _stats(oracle) if oracle else None,
                                "splits": [int(f.parent.name[5:]) for f in sorted(folder.glob("split*/results.json"))],
                                "steps": rows[0]["steps"], "wall_time_s_mean": statistics.fmean(r["wall_time_s"] for r in rows)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def table(summary: dict, methods: list[str], tasks: list[str]) -> str:
    fmt = lambda s: f"{s['mean']:.1f} ± {s['std']:.1f} (n={s['n']})" if s else "-"  # noqa: E731
    lines = ["| method | " + " | ".join(tasks) + " | avg |", "|---" * (len(tasks) + 2) + "|"]
    for m in methods:
        for part, label in (("last", "last"), ("oracle_best", "best over training, ORACLE")):
            cells, means = [], []
            for t in tasks:
                s = summary.get(f"{m}_{t}", {}).get(part)
                cells.append(fmt(s))
                if s:
                    means.append(s["mean"])
            avg = f"{statistics.fmean(means):.1f}" if len(means) == len(tasks) else "-"
            lines.append(f"| {m} ({label}) | " + " | ".join(cells) + f" | {avg} |")
    if all(t in DECAF_TASKS for t in tasks):  # published numbers of the same tasks (average over them)
        for name, vals in PUBLISHED.items():
            picked = [vals[DECAF_TASKS.index(t)] for t in tasks]
            lines.append(f"| {name} (published) | " + " | ".join(f"{v:.1f}" for v in picked) + f" | {statistics.fmean(picked):.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out/hda")
    ap.add_argument("--methods", nargs="+", default=["ssan", "hda_net", "target_only"])
    ap.add_argument("--tasks", nargs="+", default=DECAF_TASKS, choices=sorted(TASKS))
    ap.add_argument("--splits", type=int, default=20, help="run splits 0..N-1")
    ap.add_argument("--split-ids", type=int, nargs="+", help="run these splits instead")
    ap.add_argument("--data", default=os.environ.get("LIGHTNING_DA_DATA", "data"), help="paths.data_dir")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--report", action="store_true", help="only aggregate existing results")
    ap.add_argument("--record", metavar="BENCHMARK", default=None,
                    help="write each finished split's result record under results/BENCHMARK/")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides (after --)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        import torch

        torch.set_num_threads(args.threads)
        for split in (args.split_ids if args.split_ids is not None else range(args.splits)):
            for task in args.tasks:
                for method in args.methods:
                    run_split(method, task, split, args)
    print(table(summarise(out), args.methods, args.tasks))


if __name__ == "__main__":
    main()
