"""Speed and arithmetic of a TLlib-protocol digits run under a few execution settings.

    python -m benchmarks.tllib_speed --experiment digits_tllib/dan --steps 2000 --data DATA_DIR \
        --out bench_out/speed [--configs base compile threads2] [--save results/...json] [-- extra overrides]

Each configuration trains the same experiment (batch 128, TLlib's network) from the same seed for
``--steps`` steps in its own process, one CPU thread unless it says otherwise:

* ``base``: today's setting, one thread, channels_last (``digits_tllib/_protocol``);
* ``compile``: the same with ``method.compile=true`` (``torch.compile`` of the backbone, inductor on CPU);
* ``threads2``: the same as ``base`` on two threads.

It records every step's training loss and wall time (Lightning's ``on_train_batch_end``; data set-up
and compilation happen before the timed window: steps/s is measured from step ``--warmup`` on) and
prints, per configuration, steps/s and how far its losses move from ``base``'s: the largest and mean
absolute difference per step and the difference of the mean loss over the last 500 steps. Results go
to ``<out>/<experiment>_<config>.json`` (a ``/`` in the experiment's name written as ``_``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"base": ([], 1), "compile": (["method.compile=true"], 1), "threads2": ([], 2)}


def measure(experiment: str, steps: int, data: str, overrides: list[str], out: Path) -> dict:
    """Train ``steps`` steps in this process; returns the per-step losses and times."""
    import lightning as L
    import torch

    from lightning_da.train import build, compose_config

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    cfg = compose_config([f"experiment={experiment}", f"paths.data_dir={data}", f"trainer.max_steps={steps}",
                          "+trainer.limit_val_batches=0", "test=false", "logger=none", "callbacks=none",
                          "trainer.enable_progress_bar=false", *overrides],
                         out, str(ROOT / "conf"))
    L.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    record = {"loss": [], "time": []}

    class Timer(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            record["loss"].append(float(outputs["loss"]))
            record["time"].append(time.perf_counter())

    trainer.callbacks.append(Timer())
    trainer.fit(model, datamodule=datamodule)
    return record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="digits_tllib/dan")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--data", default=os.environ.get("LIGHTNING_DA_DATA", "data"))
    ap.add_argument("--out", default="bench_out/speed")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--save", default=None, help="write the summary here as a result record (JSON)")
    ap.add_argument("--reuse", action="store_true", help="summarise the per-step files already in --out, "
                    "without training")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stem = args.experiment.replace("/", "_")
    if args.child:  # one configuration, in this process
        extra, _ = CONFIGS[args.child]
        rec = measure(args.experiment, args.steps, args.data, [*extra, *args.overrides], out / f"run_{stem}_{args.child}")
        (out / f"{stem}_{args.child}.json").write_text(json.dumps(rec))
        return
    for name in [] if args.reuse else args.configs:
        _, threads = CONFIGS[name]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, "-m", "benchmarks.tllib_speed", "--experiment", args.experiment, "--steps",
                        str(args.steps), "--data", args.data, "--out", str(out), "--child", name, "--", *args.overrides],
                       cwd=ROOT, env=env, check=True)
    recs = {n: json.loads((out / f"{stem}_{n}.json").read_text()) for n in args.configs}
    result = summary(recs, args.warmup)
    for name, row in result.items():
        line = f"{args.experiment} {name}: {row['steps_per_s']:.2f} steps/s over steps {args.warmup}-{row['steps'] - 1}"
        if "max_abs_loss_diff" in row:
            line += (f"; loss vs base: max |diff| {row['max_abs_loss_diff']:.3g}, mean |diff| "
                     f"{row['mean_abs_loss_diff']:.3g}, first step differing > 1e-6: {row['first_step_differing']}, "
                     f"mean of the last 500 steps {row['last_500_mean_loss_diff']:+.4f}")
        print(line, flush=True)
    if args.save:
        from benchmarks.records import code_state, machine
        record = {"source": "run", "benchmark": "tllib_speed", "experiment": args.experiment, "steps": args.steps,
                  "warmup": args.warmup, "overrides": args.overrides, "configs": result,
                  "command": ["python", "-m", "benchmarks.tllib_speed", *measuring_args(sys.argv[1:])],
                  **code_state(), "machine": machine(None)}
        path = Path(args.save)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {path}")


def measuring_args(argv: list[str]) -> list[str]:
    """The command line that measured (without ``--reuse`` and ``--save PATH``, which only summarise)."""
    out, skip = [], False
    for a in argv:
        if skip or a == "--reuse":
            skip = False
            continue
        if a == "--save":
            skip = True
            continue
        if not a.startswith("--save="):
            out.append(a)
    return out


def summary(recs: dict[str, dict], warmup: int) -> dict[str, dict]:
    """Per configuration: steps/s from step ``warmup`` on and, against ``base``, how far the per-step
    training losses move (largest and mean absolute difference, the first step that differs by more
    than 1e-6, the difference of the mean loss over the last 500 steps)."""
    base, result = recs.get("base"), {}
    for name, rec in recs.items():
        t = rec["time"]
        row = {"threads": CONFIGS[name][1], "steps": len(t), "steps_per_s": (len(t) - 1 - warmup) / (t[-1] - t[warmup])}
        if base is not None and name != "base":
            diffs = [abs(a - b) for a, b in zip(rec["loss"], base["loss"])]
            row.update(max_abs_loss_diff=max(diffs), mean_abs_loss_diff=statistics.mean(diffs),
                       first_step_differing=next((i for i, d in enumerate(diffs) if d > 1e-6), None),
                       last_500_mean_loss_diff=statistics.mean(rec["loss"][-500:]) - statistics.mean(base["loss"][-500:]))
        result[name] = row
    return result


if __name__ == "__main__":
    main()
