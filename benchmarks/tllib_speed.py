"""Speed and arithmetic of a TLlib-protocol digits run under a few execution settings.

    python -m benchmarks.tllib_speed --experiment digits_tllib/dan --steps 2000 --data ../shared/data \
        --out bench_out/speed [--configs base compile threads2] [-- extra overrides]

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
    for name in args.configs:
        _, threads = CONFIGS[name]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        subprocess.run([sys.executable, "-m", "benchmarks.tllib_speed", "--experiment", args.experiment, "--steps",
                        str(args.steps), "--data", args.data, "--out", str(out), "--child", name, "--", *args.overrides],
                       cwd=ROOT, env=env, check=True)
    recs = {n: json.loads((out / f"{stem}_{n}.json").read_text()) for n in args.configs}
    base = recs.get("base")
    for name, rec in recs.items():
        t = rec["time"]
        speed = (len(t) - 1 - args.warmup) / (t[-1] - t[args.warmup])
        line = f"{args.experiment} {name}: {speed:.2f} steps/s over steps {args.warmup}-{len(t) - 1}"
        if base is not None and name != "base":
            diffs = [abs(a - b) for a, b in zip(rec["loss"], base["loss"])]
            tail = statistics.mean(rec["loss"][-500:]) - statistics.mean(base["loss"][-500:])
            first = next((i for i, d in enumerate(diffs) if d > 1e-6), None)
            line += (f"; loss vs base: max |diff| {max(diffs):.3g}, mean |diff| {statistics.mean(diffs):.3g}, "
                     f"first step differing > 1e-6: {first}, mean of the last 500 steps {tail:+.4f}")
        print(line, flush=True)


if __name__ == "__main__":
    main()
