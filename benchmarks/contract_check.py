"""Does a refactor move numbers? Train a few methods for a fixed number of steps, keep every logged
training value per step and the final weights, and compare two such records exactly.

    python -m benchmarks.contract_check --out bench_out/check_before [--methods dann mcd ...] [--steps 200]
    python -m benchmarks.contract_check --compare bench_out/check_before bench_out/check_after

Each method trains on the bundled digits (MNIST -> USPS, no data files needed) through the same
config composition as ``run.py``, on one CPU thread, with every training scalar logged at every step
(``trainer.log_every_n_steps=1``, CSV logger) and no evaluation. The multi-phase methods are set up
so that the ``--steps`` steps cross their phase change (ADDA's adaptation and SHOT's target phase
start at step ``steps / 2``; CGDM's pseudo labels exist from the second epoch). ``--compare`` prints,
per method, the largest absolute difference of every logged value and of every state_dict tensor,
and exits non-zero unless every one is exactly zero (same keys, same values).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

#: per method: the experiment and what makes ``steps`` cross its phases (``{half}``: epochs in half the run)
SETUPS = {
    "dann": ["method=dann"],
    "mcd": ["experiment=digits/mcd"],
    "cgdm": ["experiment=digits/cgdm"],
    "adda": ["experiment=digits/adda", "method.pretrain_epochs={half}"],
    "shot": ["experiment=digits/shot", "method.source_epochs={half}"],
    "fixmatch": ["experiment=digits/fixmatch"],
}
EPOCHS = 4


def overrides(method: str, steps: int) -> list[str]:
    per_epoch = max(steps // EPOCHS, 1)
    return [o.format(half=EPOCHS // 2) for o in SETUPS[method]] + [
        "data=digits_bundled", f"data.iters_per_epoch={per_epoch}", f"trainer.max_epochs={EPOCHS}", "data.batch_size=32",
        "trainer.log_every_n_steps=1", "logger=csv", "callbacks=none", "trainer.enable_progress_bar=false",
        "+trainer.limit_val_batches=0", "test=false", "monitor=null", "seed=0"]


def record(method: str, steps: int, out: Path) -> None:
    import torch

    from lightning_da.train import compose_config, train

    run_dir = out / method
    cfg = compose_config(overrides(method, steps), run_dir)
    train(cfg)
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))
    logged: dict[str, dict[str, float]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("step", "epoch") and value != "":
                logged.setdefault(key, {})[row["step"]] = float(value)
    state = torch.load(run_dir / "checkpoints" / "final.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    torch.save(state, run_dir / "final_state.pt")
    (run_dir / "logged.json").write_text(json.dumps(logged, indent=1, sort_keys=True))
    print(f"{method}: {len(rows)} logged rows, {len(logged)} keys, {len(state)} state_dict tensors -> {run_dir}", flush=True)


def compare(a: Path, b: Path, methods: list[str]) -> bool:
    import torch

    same = True
    for method in methods:
        la = json.loads((a / method / "logged.json").read_text())
        lb = json.loads((b / method / "logged.json").read_text())
        sa = torch.load(a / method / "final_state.pt", weights_only=True)
        sb = torch.load(b / method / "final_state.pt", weights_only=True)
        problems = []
        for what, x, y in (("logged keys", la, lb), ("state_dict keys", sa, sb)):
            if set(x) != set(y):
                problems.append(f"{what} differ: only before {sorted(set(x) - set(y))}, only after {sorted(set(y) - set(x))}")
        worst_log = max((abs(la[k][s] - lb[k].get(s, math.inf)) if s in lb[k] else math.inf
                         for k in set(la) & set(lb) for s in la[k]), default=0.0)
        steps_differ = sorted(k for k in set(la) & set(lb) if set(la[k]) != set(lb[k]))
        if steps_differ:
            problems.append(f"logged at other steps: {steps_differ}")
        worst_state = 0.0
        for k in set(sa) & set(sb):
            if not isinstance(sa[k], torch.Tensor):  # extra states (e.g. a GRL's step counter)
                if sa[k] != sb[k]:
                    problems.append(f"{k}: {sa[k]!r} vs {sb[k]!r}")
            elif sa[k].shape != sb[k].shape:
                problems.append(f"{k}: shape {tuple(sa[k].shape)} vs {tuple(sb[k].shape)}")
            elif not torch.equal(sa[k], sb[k]):
                worst_state = max(worst_state, float((sa[k].double() - sb[k].double()).abs().max()))
        n_logged = sum(len(v) for v in la.values())
        ok = not problems and worst_log == 0 and worst_state == 0
        same &= ok
        print(f"{method:9s} {'IDENTICAL' if ok else 'DIFFERENT'}: {n_logged} logged values over {len(la)} keys, "
              f"max |diff| {worst_log:.3g}; {len(sa)} state_dict tensors, max |diff| {worst_state:.3g}"
              + "".join(f"\n    {p}" for p in problems))
    return same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    ap.add_argument("--methods", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
    if args.compare:
        sys.exit(0 if compare(*args.compare, args.methods) else 1)
    if args.out is None:
        ap.error("give --out (record) or --compare BEFORE AFTER")
    import torch

    torch.set_num_threads(1)
    for method in args.methods:
        record(method, args.steps, args.out)


if __name__ == "__main__":
    main()
