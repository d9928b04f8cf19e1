"""Collect ``results.json`` files under a folder into a table: mean and std over seeds per method and task.

    python -m lightning_da.report <runs or multirun folder> [--csv table.csv] [--by-folder]
        [--by KEY [KEY ...]] [--selection] [--plot figure.png]

Runs are grouped by method (with its norm when that is not ``bn``) and task; ``--by-folder`` groups
by each run folder's parent instead (the ``<label>_<task>/seed<N>`` layout of the grid runners);
``--by method.trade_off optimizer.lr`` adds the values of those config keys, read from each run's
``.hydra/config.yaml`` (one row per grid point of a sweep).

Columns: target test accuracy of the last checkpoint, of the best checkpoint by the run's monitor
(named), and the oracle best validation target accuracy (selected with target labels).

``--selection`` treats the runs of each (task, seed) as one hyper-parameter search and asks, for
every validator logged by the runs (``val/validator/<name>`` at the last validation epoch): which
run would it pick, and what target accuracy (last checkpoint) does that run have, against the
oracle (the best run by target accuracy) and the average run; plus the Spearman rank correlation
between the validator and the target accuracy over the runs, averaged over the searches.
``--plot`` draws each validator against target accuracy (one panel per validator) as a PNG.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def unfinished(folder: str | Path) -> list[Path]:
    """Run folders (a Hydra ``.hydra/`` or a ``checkpoints/`` folder inside) without ``results.json``:
    crashed, interrupted or still running."""
    marks = {p.parent for p in Path(folder).rglob(".hydra")} | {p.parent for p in Path(folder).rglob("checkpoints")}
    return sorted(d for d in marks if not (d / "results.json").exists())


def collect(folder: str | Path) -> list[dict]:
    runs = []
    for path in sorted(Path(folder).rglob("results.json")):
        with open(path) as fh:
            runs.append({**json.load(fh), "results_dir": str(path.parent)})
    return runs


@functools.lru_cache(maxsize=None)
def _hydra_config(path: Path):
    from omegaconf import OmegaConf

    return OmegaConf.load(path)


def config_value(run: dict, key: str):
    """The value of a dotted config key in the Hydra config saved next to the run's results."""
    from omegaconf import OmegaConf

    path = Path(run.get("results_dir", run["output_dir"])) / ".hydra" / "config.yaml"
    if not path.exists():
        raise SystemExit(f"--by {key}: {path} does not exist (the run was not made by run.py with Hydra's output subdir)")
    value = OmegaConf.select(_hydra_config(path), key, default="<missing>")
    if value == "<missing>":
        raise SystemExit(f"--by {key}: no such key in {path}")
    return value


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    pct = [100 * v for v in values]
    std = statistics.stdev(pct) if len(pct) > 1 else 0.0
    return f"{statistics.mean(pct):.2f} ± {std:.2f}"


def label(run: dict, by_folder: bool = False, by: tuple[str, ...] = ()) -> str:
    if by_folder:
        name = Path(run["output_dir"]).parent.name
    else:
        norm = run.get("norm", "bn")
        name = run["method"] if norm in ("bn", None) else f"{run['method']} + {norm}"
    return " ".join([name, *(f"{key}={config_value(run, key)}" for key in by)])


def table(runs: list[dict], by_folder: bool = False, by: tuple[str, ...] = ()) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        groups[(label(r, by_folder, by), r["task"])].append(r)
    rows = []
    for (method, task), rs in sorted(groups.items()):
        # full-batch HDA runs record their labelled-target split: runs differ in split, not seed
        unit = "split" if all("split" in r for r in rs) and len({r["split"] for r in rs}) > 1 else "seed"
        monitors = sorted({r["best"]["monitor"] for r in rs if "best" in r})
        rows.append({
            "method": method, "task": task, "seeds": f"{len(rs)} {unit}{'s' if len(rs) > 1 else ''}",
            "last": _mean_std([r["last"]["test/target_acc"] for r in rs if "last" in r]),
            "best": _mean_std([r["best"]["test/target_acc"] for r in rs if "best" in r]),
            "monitor": ",".join(monitors) or "-",
            "oracle": _mean_std([r["oracle"]["val/target_acc"] for r in rs if "oracle" in r]),
            "per_seed_last": " ".join(f"{100 * r['last']['test/target_acc']:.2f}" for r in sorted(rs, key=lambda r: r[unit]) if "last" in r),
        })
    return rows


def markdown(rows: list[dict]) -> str:
    head = "| method | task | runs | last | best (monitor) | oracle (target labels) | last, per seed (or split) |\n|---|---|---|---|---|---|---|"
    body = [f"| {r['method']} | {r['task']} | {r['seeds']} | {r['last']} | {r['best']} ({r['monitor']}) | {r['oracle']} | {r['per_seed_last']} |"
            for r in rows]
    return "\n".join([head, *body])


def final_validators(run: dict) -> dict[str, float]:
    """``{name: value}`` of the validators at the run's last validation epoch."""
    rows = [r for r in run.get("history", []) if any(k.startswith("val/validator/") for k in r)]
    return {k.removeprefix("val/validator/"): v for k, v in (rows[-1] if rows else {}).items() if k.startswith("val/validator/")}


def selection(runs: list[dict]) -> list[dict]:
    """One row per validator: mean over (task, seed) searches of the selected run's, the oracle run's
    and the average run's target accuracy (%), the regret and the mean Spearman correlation."""
    from scipy.stats import spearmanr

    searches: dict[tuple, list[tuple[dict, float]]] = defaultdict(list)  # (validators, target accuracy) per run
    for r in runs:
        if "last" in r:
            searches[(r["task"], r["seed"])].append((final_validators(r), r["last"]["test/target_acc"]))
    names = sorted({n for rs in searches.values() for scores, _ in rs for n in scores})
    rows = []
    for name in names:
        picked, oracle, average, rhos = [], [], [], []
        for rs in searches.values():
            scored = [(scores.get(name), acc) for scores, acc in rs]
            scored = [(v, a) for v, a in scored if v is not None]
            if len(scored) < 2:
                continue
            picked.append(max(scored, key=lambda t: t[0])[1])
            oracle.append(max(a for _, a in scored))
            average.append(statistics.mean(a for _, a in scored))
            rho = spearmanr([v for v, _ in scored], [a for _, a in scored]).statistic
            if rho == rho:  # not NaN (constant values)
                rhos.append(float(rho))
        if picked:
            rows.append({"validator": name, "searches": len(picked), "runs_per_search": max(len(rs) for rs in searches.values()),
                         "selected": 100 * statistics.mean(picked), "oracle": 100 * statistics.mean(oracle),
                         "average": 100 * statistics.mean(average),
                         "regret": 100 * (statistics.mean(oracle) - statistics.mean(picked)),
                         "spearman": statistics.mean(rhos) if rhos else float("nan")})
    return rows


def selection_markdown(rows: list[dict]) -> str:
    head = ("| validator | searches | selected run | oracle run | average run | regret (oracle - selected) | Spearman rho |\n"
            "|---|---|---|---|---|---|---|")
    body = [f"| {r['validator']} | {r['searches']} | {r['selected']:.2f} | {r['oracle']:.2f} | {r['average']:.2f} | "
            f"{r['regret']:.2f} | {r['spearman']:.2f} |" for r in rows]
    return "\n".join([head, *body])


def plot(runs: list[dict], path: str | Path) -> None:
    """Validator value vs target accuracy (last checkpoint), one panel per validator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [(final_validators(r), 100 * r["last"]["test/target_acc"]) for r in runs if "last" in r]
    names = sorted({n for scores, _ in scored for n in scores})
    if not names:
        raise SystemExit("no run logged validators (val/validator/*): nothing to plot")
    cols = min(4, len(names))
    fig, axes = plt.subplots((len(names) + cols - 1) // cols, cols, figsize=(4 * cols, 3.2 * ((len(names) + cols - 1) // cols)),
                             squeeze=False)
    for ax, name in zip(axes.flat, names):
        pts = [(scores[name], acc) for scores, acc in scored if name in scores]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14)
        ax.set_title(name)
        ax.set_xlabel("validator (higher = better)")
        ax.set_ylabel("target accuracy (%)")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--csv", default=None, help="also write the table as CSV")
    ap.add_argument("--by-folder", action="store_true", help="group by the run folder's parent, not method and norm")
    ap.add_argument("--by", nargs="+", default=(), metavar="KEY", help="also group by these config keys (e.g. method.trade_off)")
    ap.add_argument("--selection", action="store_true", help="validator-selected vs oracle vs average run per (task, seed)")
    ap.add_argument("--plot", default=None, help="write a PNG of each validator against target accuracy")
    args = ap.parse_args()
    runs = collect(args.folder)
    skipped = unfinished(args.folder)
    if skipped:
        print(f"skipped {len(skipped)} run folder(s) without results.json (crashed, interrupted or unfinished): "
              + ", ".join(str(p) for p in skipped), file=sys.stderr)
    if not runs:
        raise SystemExit(f"no results.json under {args.folder}")
    rows = table(runs, args.by_folder, tuple(args.by))
    print(markdown(rows))
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    if args.selection:
        print()
        print(selection_markdown(selection(runs)))
    if args.plot:
        plot(runs, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
