"""Collect ``results.json`` files under a folder into a table: mean and std over seeds per method and task.

    python -m lightning_da.report <runs or multirun folder> [--csv table.csv] [--by-folder]

Runs are grouped by method (with its norm when that is not ``bn``) and task; ``--by-folder`` groups
by each run folder's parent instead (the ``<label>_<task>/seed<N>`` layout of the grid runners).

Columns: target test accuracy of the last checkpoint, of the best checkpoint by the run's monitor
(named), and the oracle best validation target accuracy (selected with target labels).
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path


def collect(folder: str | Path) -> list[dict]:
    runs = []
    for path in sorted(Path(folder).rglob("results.json")):
        with open(path) as fh:
            runs.append(json.load(fh))
    return runs


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    pct = [100 * v for v in values]
    std = statistics.stdev(pct) if len(pct) > 1 else 0.0
    return f"{statistics.mean(pct):.2f} ± {std:.2f}"


def label(run: dict, by_folder: bool = False) -> str:
    if by_folder:
        return Path(run["output_dir"]).parent.name
    norm = run.get("norm", "bn")
    return run["method"] if norm == "bn" else f"{run['method']} + {norm}"


def table(runs: list[dict], by_folder: bool = False) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[(label(r, by_folder), r["task"])].append(r)
    rows = []
    for (method, task), rs in sorted(groups.items()):
        monitors = sorted({r["best"]["monitor"] for r in rs if "best" in r})
        rows.append({
            "method": method, "task": task, "seeds": len(rs),
            "last": _mean_std([r["last"]["test/target_acc"] for r in rs if "last" in r]),
            "best": _mean_std([r["best"]["test/target_acc"] for r in rs if "best" in r]),
            "monitor": ",".join(monitors) or "-",
            "oracle": _mean_std([r["oracle"]["val/target_acc"] for r in rs if "oracle" in r]),
            "per_seed_last": " ".join(f"{100 * r['last']['test/target_acc']:.2f}" for r in sorted(rs, key=lambda r: r["seed"]) if "last" in r),
        })
    return rows


def markdown(rows: list[dict]) -> str:
    head = "| method | task | seeds | last | best (monitor) | oracle (target labels) | last, per seed |\n|---|---|---|---|---|---|---|"
    body = [f"| {r['method']} | {r['task']} | {r['seeds']} | {r['last']} | {r['best']} ({r['monitor']}) | {r['oracle']} | {r['per_seed_last']} |"
            for r in rows]
    return "\n".join([head, *body])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--csv", default=None, help="also write the table as CSV")
    ap.add_argument("--by-folder", action="store_true", help="group by the run folder's parent, not method and norm")
    args = ap.parse_args()
    runs = collect(args.folder)
    if not runs:
        raise SystemExit(f"no results.json under {args.folder}")
    rows = table(runs, args.by_folder)
    print(markdown(rows))
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
