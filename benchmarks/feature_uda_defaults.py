"""Source-only on feature files (``data=features data.labeled_per_class=null``) against a
logistic-regression linear probe trained on the same source features: the check of the feature-UDA
protocol's defaults (a trained MLP should do at least as well as a linear probe).

    python -m lightning_da.data.embed_text books.tsv feats/books.npz    # one file per domain
    python -m benchmarks.feature_uda_defaults feats --tasks books:dvd dvd:electronics \\
        --config "default=" --config "wd5e-3=optimizer.weight_decay=5e-3"

``--reviews <amazon_reviews/raw>`` writes a missing ``<features_dir>/<domain>.npz`` first from the
Amazon reviews data (Blitzer's ``<domain>/{negative,positive}.review``): the first ``--per-class``
reviews of each polarity, embedded with the bundled MiniLM (``embed_text --max-length 128``), labels
``negative`` / ``positive``. ``--save results.json`` keeps the table's numbers.

Each ``--config NAME=OVERRIDES`` (space-separated run.py overrides, may be empty) trains
``--method`` (default ``source_only``) on every task; the probe is ``sklearn.linear_model.LogisticRegression(C=1)``
on the L2-normalised source rows (as ``data.l2_normalize=true`` gives the MLP), tested on every
target row. Reported: target accuracy of the last checkpoint and of the best by ``val/source_acc``
(10% source hold-out), in %, as a Markdown table (:func:`markdown`); runs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import statistics
import sys
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


def reviews_features(reviews: Path, domain: str, out: Path, per_class: int) -> None:
    """``out``: MiniLM features of the first ``per_class`` negative and positive reviews of ``domain``."""
    from lightning_da.data import embed_text
    from lightning_da.data.multimodal import read_reviews

    table = out.with_suffix(".tsv")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(table, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow(["text", "label"])
        for polarity in ("negative", "positive"):
            writer.writerows([text, polarity] for text in read_reviews(str(reviews / domain / f"{polarity}.review"))[:per_class])
    embed_text.main([str(table), str(out), "--max-length", "128", "--no-progress"])


def uda_run(source: Path, target: Path, overrides: list[str], seed: int, method: str = "source_only") -> dict:
    from lightning_da.train import compose_config, train

    with tempfile.TemporaryDirectory() as out:
        cfg = compose_config(["data=features", f"data.source={source}", f"data.target={target}", "data.labeled_per_class=null",
                              f"method={method}", "logger=none", "callbacks=none",
                              "trainer.enable_progress_bar=false", f"seed={seed}", *overrides], out)
        res = train(cfg)
    return {"last": res["last"]["test/target_acc"], "best": res.get("best", {}).get("test/target_acc"),
            "steps": res["steps"], "s": res["wall_time_s"]}


def markdown(saved: dict) -> str:
    """The table of a ``--save`` file: per task the probe and last / best per config, then their means."""
    names = list(saved["configs"])
    lines = ["| task | linear probe | " + " | ".join(f"{n} last / best" for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    rows = {task.replace(":", " -> "): row for task, row in saved["rows"].items()}
    rows["mean"] = {c: statistics.mean(r[c] for r in saved["rows"].values()) for c in saved["columns"]}
    for task, row in rows.items():
        cells = [f"{row['linear probe']:.1f}"] + [f"{row[n + ' last']:.1f} / {row[n + ' best']:.1f}" for n in names]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("features_dir", help="a folder of <domain>.npz feature files")
    ap.add_argument("--tasks", nargs="+", required=True, help="source:target domain pairs")
    ap.add_argument("--config", action="append", default=[], help="NAME=space-separated run.py overrides")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--method", default="source_only", help="the UDA method to train (default: source_only)")
    ap.add_argument("--reviews", type=Path, help="Amazon reviews raw folder: embed missing <domain>.npz files from it")
    ap.add_argument("--per-class", type=int, default=1000, help="reviews per polarity and domain (--reviews)")
    ap.add_argument("--save", type=Path, help="write the numbers as JSON")
    args = ap.parse_args(argv)
    root = Path(args.features_dir)
    for domain in sorted({d for task in args.tasks for d in task.split(":")}):
        if args.reviews and not (root / f"{domain}.npz").exists():
            reviews_features(args.reviews, domain, root / f"{domain}.npz", args.per_class)
    configs = dict(c.split("=", 1) for c in (args.config or ["default="]))
    columns = ["linear probe"] + [f"{name} {kind}" for name in configs for kind in ("last", "best")]
    rows = {}
    for task in args.tasks:
        s, t = (root / f"{d}.npz" for d in task.split(":"))
        row = [100 * probe_accuracy(s, t)]
        for overrides in configs.values():
            runs = [uda_run(s, t, shlex.split(overrides), seed, args.method) for seed in range(args.seeds)]
            row += [100 * statistics.mean(r["last"] for r in runs), 100 * statistics.mean(r["best"] or float("nan") for r in runs)]
        rows[task] = dict(zip(columns, row))
        print(f"{task}: " + ", ".join(f"{c} {v:.1f}" for c, v in rows[task].items()), flush=True)
    saved = {"command": "python -m benchmarks.feature_uda_defaults " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
             "method": args.method, "seeds": args.seeds, "configs": configs, "columns": columns, "rows": rows}
    print(markdown(saved))
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(saved, indent=1) + "\n")


if __name__ == "__main__":
    start = time.time()
    main()
    print(f"({time.time() - start:.0f} s)")
