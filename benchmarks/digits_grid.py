"""Run a results grid (README digits and Office-Caltech10 tables): every method x task x seed as its
own ``run.py`` process, ``--workers`` at a time with ``--threads`` CPU threads each (default 1).

    python -m benchmarks.digits_grid --out bench_out/digits [--workers 2] [--threads 1] \
        [--methods cgdm mcd] [--tasks m2u u2m mnistm] [--seeds 0 1 2] [--data ../shared/data] [-- extra overrides]

Tasks are the files of ``conf/task`` (passed as ``task=<name>``). Methods on the digit tasks (m2u,
u2m, mnistm): ``cgdm``, ``mcd`` (the MCD / CGDM table),
``cdan_e_<norm>`` for norm in bn, adabn, dsbn, transnorm, rn (the normalization table,
``experiment=digits/norm_cdan_e``), ``fixmatch`` and ``source_only`` (the FixMatch table), and ``dann``, ``cdan_e`` and the
other UDA methods (``dan``, ``jan``, ``coral``, ``mcc``, ``bnm``, ``afn``, ``bsp``, ``mdd``, ``adda``,
``self_ensemble``, ``cc_loss``, ``shot``: ``experiment=digits/<name>``; SHOT on u2m also needs
``-- method.source_epochs=1``). On the
Office-Caltech10 tasks (a2w, w2a, c2d, d2c, ...: first letters of amazon, caltech, dslr, webcam):
``oc_fixmatch``, ``oc_source_only``, ``oc_source_only_adabn`` (EfficientNet-Lite0, ``experiment=office_caltech/_protocol``) and
``oc_cdan_e_bn`` / ``oc_cdan_e_dsbn`` / ``oc_cdan_e_rn`` (``experiment=office_caltech/norm_cdan_e``).
``<m>_tllib`` runs TLlib's published digits protocol with TLlib's per-method settings
(``experiment=digits_tllib/<m>``: batch 128, 50,000 steps; each experiment's header gives its U -> M lr,
e.g. ``-- optimizer.lr=0.1``) for m in dann, cdan_e, dan, jan, mcc, mdd, afn, bsp, adda, cc_loss, mcd,
source_only.

A run whose ``results.json`` exists is skipped; one that stopped part-way resumes from its
``checkpoints/last.ckpt``, so the grid can be spread over several sittings. Summarise with
``python -m lightning_da.report <out>``. ``--record BENCHMARK`` writes each finished run's result record
``results/BENCHMARK/<experiment>/<task>/seed<k>.json`` (``benchmarks.records``) as soon as it finishes
(and for an already finished run that has none yet).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks import records

ROOT = Path(__file__).resolve().parents[1]
#: the digit and Office-Caltech10 image tasks of conf/task (``task=<name>`` on top of the method's experiment)
TASKS = sorted(p.stem for p in (ROOT / "conf" / "task").glob("*.yaml") if not p.stem.startswith("surf_"))
EXPERIMENTS = {"cgdm": ["experiment=digits/cgdm"], "mcd": ["experiment=digits/mcd"],
               **{f"cdan_e_{norm}": ["experiment=digits/norm_cdan_e", f"norm={norm}"]
                  for norm in ("bn", "adabn", "dsbn", "transnorm", "rn")},
               "fixmatch": ["experiment=digits/fixmatch"], "source_only": ["experiment=digits/source_only"],
               **{m: [f"experiment=digits/{m}"] for m in ("dann", "cdan_e", "dan", "jan", "coral", "mcc", "bnm", "afn",
                                                          "bsp", "mdd", "adda", "self_ensemble", "cc_loss", "shot")},
               "oc_fixmatch": ["experiment=office_caltech/fixmatch"], "oc_source_only": ["experiment=office_caltech/source_only"],
               "oc_source_only_adabn": ["experiment=office_caltech/source_only", "norm=adabn"],
               **{f"oc_cdan_e_{norm}": ["experiment=office_caltech/norm_cdan_e", f"norm={norm}"] for norm in ("bn", "dsbn", "rn")},
               # TLlib's published digits protocol (batch 128, 50,000 steps) with TLlib's per-method settings
               **{f"{m}_tllib": [f"experiment=digits_tllib/{m}"]
                  for m in ("dann", "cdan_e", "dan", "jan", "mcc", "mdd", "afn", "bsp", "adda", "cc_loss", "mcd",
                            "source_only")}}


def experiment_name(method: str) -> str:
    """The record folder of a grid method: its experiment's name when that is all it sets, else the method key."""
    entry = EXPERIMENTS[method]
    return entry[0].split("=", 1)[1] if len(entry) == 1 and entry[0].startswith("experiment=") else method


def command(method: str, task: str, seed: int, run_dir: Path, data: str, extra: list[str]) -> list[str]:
    cmd = [sys.executable, str(ROOT / "run.py"), *EXPERIMENTS[method], f"task={task}",
           f"seed={seed}", f"paths.data_dir={data}", f"hydra.run.dir={run_dir}", *extra]
    last = run_dir / "checkpoints" / "last.ckpt"
    if last.exists():
        cmd.append(f"ckpt_path={last}")
    return cmd


def write_record(job: tuple[str, str, int], run_dir: Path, args) -> str:
    """Write the run's result record when ``--record`` asks for one and it is missing or older than the run."""
    method, task, seed = job
    benchmark = getattr(args, "record", None)
    if not benchmark or not (run_dir / "results.json").exists():
        return ""
    experiment = experiment_name(method)
    path = records.record_path(benchmark, experiment, task, seed)
    if path.exists() and path.stat().st_mtime >= (run_dir / "results.json").stat().st_mtime:
        return ""
    cmd_file = run_dir / "command.json"
    cmd = json.loads(cmd_file.read_text()) if cmd_file.exists() else command(method, task, seed, run_dir, args.data, args.overrides)
    sittings = len((run_dir / "sittings.log").read_text().splitlines()) if (run_dir / "sittings.log").exists() else 1
    code = json.loads((run_dir / "code.json").read_text()) if (run_dir / "code.json").exists() else None
    records.write_record(run_dir, benchmark=benchmark, experiment=experiment, task=task, seed=seed, command=cmd,
                         threads=args.threads, sittings=sittings, code=code)
    return f"; record {path}"


def run_one(job: tuple[str, str, int], args) -> str:
    method, task, seed = job
    run_dir = Path(args.out).resolve() / f"{method}_{task}" / f"seed{seed}"
    if (run_dir / "results.json").exists():
        return f"skip {run_dir} (done){write_record(job, run_dir, args)}"
    run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    cmd = command(method, task, seed, run_dir, args.data, args.overrides)
    print("start", " ".join(cmd[1:]), flush=True)
    if not (run_dir / "command.json").exists():  # the first sitting's command (later ones add ckpt_path)
        (run_dir / "command.json").write_text(json.dumps(cmd))
    (run_dir / "code.json").write_text(json.dumps(records.code_state()))  # the code this sitting runs
    with open(run_dir / "sittings.log", "a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} threads={args.threads}\n")
    with open(run_dir / "stdout.log", "a") as log:
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        return f"FAILED (exit {rc}) {run_dir}"
    return f"done {run_dir}{write_record(job, run_dir, args)}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_out/digits")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads per run (a lone run on a free machine can use more)")
    ap.add_argument("--methods", nargs="+", default=["cgdm", "mcd"], choices=list(EXPERIMENTS))
    ap.add_argument("--tasks", nargs="+", default=["m2u", "u2m", "mnistm"], choices=TASKS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--data", default=os.environ.get("LIGHTNING_DA_DATA", "data"))
    ap.add_argument("--record", metavar="BENCHMARK", default=None,
                    help="write each finished run's result record to results/BENCHMARK/<experiment>/<task>/seed<k>.json")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (after --)")
    args = ap.parse_args()
    jobs = [(m, t, s) for t in args.tasks for s in args.seeds for m in args.methods]
    with ThreadPoolExecutor(args.workers) as pool:
        for line in pool.map(lambda job: run_one(job, args), jobs):
            print(line, flush=True)


if __name__ == "__main__":
    main()
