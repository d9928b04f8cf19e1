"""Source-only on feature files (``data=features data.labeled_per_class=null``) against a
logistic-regression linear probe trained on the same source features: the check of the feature-UDA
protocol's defaults (a trained MLP should do at least as well as a linear probe).

    python -m lightning_da.data.embed_text books.tsv feats/books.npz    # one file per domain
    python -m benchmarks.feature_uda_defaults feats --tasks books:dvd dvd:electronics \\
        --config "default=" --config "wd5e-3=optimizer.weight_decay=5e-3"

Each ``--config NAME=OVERRIDES`` (space-separated run.py overrides, may be empty) trains
``--method`` (default ``source_only``) on every task; the probe is ``sklearn.linear_model.LogisticRegression(C=1)``
on the L2-normalised source rows (as ``data.l2_normalize=true`` gives the MLP), tested on every
target row. Reported: target accuracy of the last checkpoint and of the best by ``val/source_acc``
(10% source hold-out), in %; runs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def probe_accuracy(source: Path, target: Path, c: float = 1.0) -> float:
    """Target accuracy of a logistic regression on the L2-normalised source features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import normalize

    s, t = np.load(source), np.load(target)
    clf = LogisticRegression(C=c, max_iter=5000).fit(normalize(s["features"]), s["labels"])
    return float((clf.predict(normalize(t["features"])) == t["labels"]).mean())


def uda_run(source: Path, target: Path, overrides: list[str], seed: int, method: str = "source_only") -> dict:
    from lightning_da.train import compose_config, train

    with tempfile.TemporaryDirectory() as out:
        cfg = compose_config(["data=features", f"data.source={source}", f"data.target={target}", "data.labeled_per_class=null",
                              f"method={method}", "logger=none", "callbacks=none",
                              "trainer.enable_progress_bar=false", f"seed={seed}", *overrides], out)
        res = train(cfg)
    return {"last": res["last"]["test/target_acc"], "best": res.get("best", {}).get("test/target_acc"),
            "steps": res["steps"], "s": res["wall_time_s"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("features_dir", help="a folder of <domain>.npz feature files")
    ap.add_argument("--tasks", nargs="+", required=True, help="source:target domain pairs")
    ap.add_argument("--config", action="append", default=[], help="NAME=space-separated run.py overrides")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--method", default="source_only", help="the UDA method to train (default: source_only)")
    args = ap.parse_args(argv)
    root = Path(args.features_dir)
    configs = [c.split("=", 1) for c in (args.config or ["default="])]
    print("| task | linear probe | " + " | ".join(f"{n} last / best" for n, _ in configs) + " |")
    print("|---|---|" + "---|" * len(configs))
    rows = []
    for task in args.tasks:
        s, t = (root / f"{d}.npz" for d in task.split(":"))
        row = [100 * probe_accuracy(s, t)]
        for _, overrides in configs:
            runs = [uda_run(s, t, shlex.split(overrides), seed, args.method) for seed in range(args.seeds)]
            row += [100 * statistics.mean(r["last"] for r in runs), 100 * statistics.mean(r["best"] or float("nan") for r in runs)]
        rows.append(row)
        cells = [f"{row[0]:.1f}"] + [f"{row[i]:.1f} / {row[i + 1]:.1f}" for i in range(1, len(row), 2)]
        print(f"| {task.replace(':', '->')} | " + " | ".join(cells) + " |", flush=True)
    mean = [statistics.mean(col) for col in zip(*rows)]
    cells = [f"{mean[0]:.1f}"] + [f"{mean[i]:.1f} / {mean[i + 1]:.1f}" for i in range(1, len(mean), 2)]
    print("| mean | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"({time.time() - start:.0f} s)")
