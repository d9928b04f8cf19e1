"""GPU check kit: one prepared run that records what a GPU machine gives this library.

    python -m benchmarks.gpu_check --out DIR [--budget-s 420] [--smoke] [--digits-steps N]
        [--data ../shared/data] [--device cuda|cpu] [--work DIR] [--threads N] [--parts digits throughput ...]

Writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` (a markdown table), rewritten after every
item, so that a run stopped at its limit still leaves what it measured. Parts, in order:

1. ``environment``: torch / CUDA / cuDNN / GPU name, versions of lightning, torchvision, hydra-core,
   omegaconf, open_clip_torch (or "missing").
2. ``digits``: DANN and CDAN+E MNIST -> USPS at TLlib's protocol (``experiment=digits_tllib/dann`` /
   ``digits_tllib/cdan_e``: batch 128, 2,500 iterations x 20 epochs, lr 0.01) through
   :func:`lightning_da.train.compose_config` + :func:`lightning_da.train.train`, ``trainer=gpu
   logger=none callbacks=none``; last / best-by-monitor / oracle target accuracy next to TLlib's
   91.7 / 96.0, the steps actually run and the wall time. ``--digits-steps N`` shortens each run
   (``trainer.max_steps=N``); each run is also capped by Lightning's ``max_time`` at its share of
   the time budget (the steps run are recorded either way).
3. ``throughput``: images/s of one ResNet-50 (random weights) DANN optimiser step on 32 + 32 images
   at 224 px (``DANN.training_step`` + SGD outside a Trainer) in fp32, bf16 autocast, bf16 +
   channels_last, bf16 + channels_last + torch.compile, each against the backbone-only
   forward + backward + SGD step (the ceiling); ``norm=rn`` against ``norm=bn``; a CMKD step
   (:mod:`benchmarks.cmkd_step`) on random-weight CLIP RN50 and ViT-B/16.
4. ``ddp``: ``trainer=ddp trainer.devices=1`` for a few DANN steps on ``data=digits_bundled``.

A part (and an item of a part) that raises records its error and the run goes on; once
``--budget-s`` is spent, the remaining items are recorded as "skipped: time budget" (the
environment is always recorded).
``--smoke`` runs every part on the CPU with tiny sizes (bundled digits, 3 steps; 32 px, batch 2 + 2,
2 timed steps; tiny CLIP; DDP on ``trainer=ddp_cpu trainer.devices=1``), in about a minute.

On the device machine (no hydra-core / omegaconf / open_clip_torch there; ``../shared`` does not
travel), once, here, in the repository root, fill an ignored carry folder ``.gpu_carry`` (about
16 MB: pure-Python wheels, MNIST raw gzipped, USPS)::

    mkdir -p .git/info && echo /.gpu_carry/ >> .git/info/exclude
    mkdir -p .gpu_carry/wheels .gpu_carry/data/MNIST/raw
    python -m pip download --no-deps -d .gpu_carry/wheels hydra-core==1.3.2 omegaconf==2.3.0 \\
        open_clip_torch==3.3.0 ftfy wcwidth
    python -m pip wheel --no-deps -w .gpu_carry/wheels antlr4-python3-runtime==4.9.3   # sdist only on PyPI
    for f in ../shared/data/MNIST/raw/*-ubyte; do gzip -c "$f" > .gpu_carry/data/MNIST/raw/$(basename "$f").gz; done
    cp ../shared/data/usps.bz2 ../shared/data/usps.t.bz2 .gpu_carry/data/

then one device call, ``carry: [".gpu_carry"]``, ``timeout_s: 560``::

    bash benchmarks/gpu_check.sh "$OUT" --budget-s 420 --digits-steps 5000

(:file:`gpu_check.sh` installs the wheels into /tmp with ``pip install --no-index --no-deps
--target``, unpacks the data into /tmp and runs this module; drop ``--digits-steps`` for the full
50,000-step protocol when the device time allows: the digits runs are capped by the budget anyway.)
The two files come back under $OUT.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import io
import json
import platform
import re
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from functools import partial
from pathlib import Path

import torch

PUBLISHED = {"DANN": ("digits_tllib/dann", 91.7), "CDAN+E": ("digits_tllib/cdan_e", 96.0)}
PROTOCOL_STEPS = 2500 * 20
PACKAGES = ["lightning", "torchvision", "hydra-core", "omegaconf", "open_clip_torch", "timm", "torchmetrics"]
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class Check:
    """The report being built: parts of items, the time budget, rewritten to disk after every item."""

    def __init__(self, args):
        self.args, self.out = args, Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.start = time.monotonic()
        self.deadline = self.start + args.budget_s
        self.report = {"args": {k: v for k, v in vars(args).items()}, "device": args.device, "smoke": args.smoke,
                       "budget_s": args.budget_s, "parts": {}}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def part(self, name: str, fn, always: bool = False) -> None:
        entry = self.report["parts"][name] = {"status": "running", "items": {}}
        if self.left() <= 0 and not always:
            entry["status"] = "skipped: time budget"
            self.write()
            return
        t0 = time.monotonic()
        try:
            fn(self, entry)
            entry["status"] = "ok"
        except Exception as e:  # noqa: BLE001 - record and go on
            entry["status"] = "error"
            entry["error"] = f"{type(e).__name__}: {e}"
            entry["traceback"] = traceback.format_exc(limit=6)
        entry["wall_s"] = round(time.monotonic() - t0, 2)
        self.write()

    def item(self, entry: dict, name: str, fn, *args, **kwargs) -> dict | None:
        items = entry["items"]
        if self.left() <= 0:
            items[name] = {"status": "skipped: time budget"}
            self.write()
            return None
        t0 = time.monotonic()
        try:
            res = {"status": "ok", **fn(*args, **kwargs)}
        except Exception as e:  # noqa: BLE001 - record and go on
            res = {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000],
                   "traceback": traceback.format_exc(limit=6)[-3000:]}
        res["wall_s"] = round(time.monotonic() - t0, 2)
        items[name] = res
        self.write()
        if self.args.device == "cuda":
            torch.cuda.empty_cache()
        return res

    def write(self) -> None:
        self.report["elapsed_s"] = round(time.monotonic() - self.start, 2)
        (self.out / "gpu_check.json").write_text(json.dumps(self.report, indent=2, default=str))
        (self.out / "gpu_check.md").write_text(markdown(self.report))


# ---------------------------------------------------------------------- 1. environment
def environment(check: Check, entry: dict) -> None:
    env = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
           "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
           "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
           "device_used": check.args.device, "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_count"] = torch.cuda.device_count()
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        env["bf16_supported"] = torch.cuda.is_bf16_supported()
    else:
        env["gpu"] = "none"
    for name in PACKAGES:
        try:
            env[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            env[name] = "missing"
    entry["items"]["versions"] = {"status": "ok", **env}


# ---------------------------------------------------------------------- 2. digits protocol
def _trainer_group(device: str) -> str:
    return "trainer=gpu" if device == "cuda" else "trainer=cpu"


def run_train(overrides: list[str], run_dir: Path) -> dict:
    from lightning_da.train import compose_config, train

    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return train(compose_config(overrides, run_dir))
    finally:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)


def _max_time(seconds: float) -> str:
    s = max(int(seconds), 10)
    return f"{s // 86400:02d}:{s % 86400 // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _acc(v) -> float | None:
    return round(100 * v, 2) if isinstance(v, (int, float)) else None


def digits_run(check: Check, method: str, experiment: str, published: float, time_cap: float) -> dict:
    a = check.args
    overrides = [f"experiment={experiment}", _trainer_group(a.device), f"paths.data_dir={a.data}",
                 "logger=none", "callbacks=none", "trainer.enable_progress_bar=false", f"++trainer.max_time={_max_time(time_cap)}"]
    if a.smoke:
        overrides += ["data=digits_bundled", "data.batch_size=8", "data.iters_per_epoch=3", "trainer.max_epochs=1"]
    steps = 3 if a.smoke else a.digits_steps
    if steps:
        overrides.append(f"trainer.max_steps={steps}")
    requested = steps or PROTOCOL_STEPS
    t0 = time.monotonic()
    res = run_train(overrides, Path(a.work) / f"digits_{experiment.replace('/', '_')}")
    return {"method": method, "experiment": experiment, "overrides": overrides, "steps_requested": requested,
            "steps_run": res.get("steps"), "epochs": res.get("epochs"), "protocol_steps": PROTOCOL_STEPS,
            "full_protocol": res.get("steps") == PROTOCOL_STEPS, "time_cap_s": int(time_cap),
            "last_target_acc": _acc(res.get("last", {}).get("test/target_acc")),
            "best_target_acc": _acc(res.get("best", {}).get("test/target_acc")),
            "best_monitor": res.get("best", {}).get("monitor"),
            "oracle_target_acc": _acc(res.get("oracle", {}).get("val/target_acc")),
            "published_tllib": published, "precision": res.get("precision"), "task": res.get("task"),
            "train_wall_s": res.get("wall_time_s"), "wall_s_total": round(time.monotonic() - t0, 2),
            **({} if res.get("best") or res.get("oracle") else
               {"note": "no validation epoch finished (validation runs at epoch ends): no best / oracle"})}


def digits(check: Check, entry: dict) -> None:
    runs = list(PUBLISHED.items())
    for i, (method, (experiment, published)) in enumerate(runs):
        # this run's share of what is left, keeping 40% of the whole budget for the later parts
        reserve = 0.4 * check.args.budget_s
        cap = max((check.left() - reserve) / (len(runs) - i), 30.0)
        check.item(entry, method, digits_run, check, method, experiment, published, cap)


# ---------------------------------------------------------------------- 3. throughput
VARIANTS = {"fp32": dict(bf16=False, cl=False, compile=False), "bf16": dict(bf16=True, cl=False, compile=False),
            "bf16+channels_last": dict(bf16=True, cl=True, compile=False),
            "bf16+channels_last+compile": dict(bf16=True, cl=True, compile=True)}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _norm(kind: str):
    """The norm as the ``norm`` config group builds it (conf/norm/<kind>.yaml), or convert_norm directly."""
    try:
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        return instantiate(OmegaConf.load(CONF_DIR / "norm" / f"{kind}.yaml"))
    except ImportError:
        from lightning_da.norm import convert_norm

        return partial(convert_norm, kind=kind)


def _timed(step, device: str, warmup: int, steps: int) -> list[float]:
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        step(i)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def _result(times: list[float], images: int, device: str, **extra) -> dict:
    med = statistics.median(times)
    out = {"ms_per_step": round(1000 * med, 2), "images_per_s": round(images / med, 1), "timed_steps": len(times), **extra}
    if device == "cuda":
        out["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def _compile_backend(device: str) -> str:
    return "inductor" if device == "cuda" else "eager"  # no C++ build of a ResNet-50 on a small CPU


def dann_step(check: Check, base: torch.nn.Module, variant: str, norm: str = "bn") -> dict:
    from lightning_da.methods import DANN
    from lightning_da.norm import clamp_norm_gates

    a, v, dev = check.args, VARIANTS[variant], check.args.device
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = DANN(copy.deepcopy(base), 31, optimizer=partial(torch.optim.SGD, lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-3),
                 norm=_norm(norm), bottleneck={"dim": 256, "batch_norm": True, "relu": True, "dropout": 0.0},
                 discriminator={"hidden": 1024, "num_hidden": 2, "batch_norm": True}, channels_last=v["cl"]).to(dev).train()
    if v["cl"]:
        model.to(memory_format=torch.channels_last)
    if v["compile"]:
        model.backbone.compile(backend=_compile_backend(dev))
    opt = model.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    b, s = a.batch, a.size
    batch = {"source": (torch.randn(b, 3, s, s, device=dev), torch.randint(0, 31, (b,), device=dev)),
             "target": (torch.randn(b, 3, s, s, device=dev), torch.zeros(b, dtype=torch.long, device=dev))}
    rn = norm == "rn"

    def step(i):
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=v["bf16"]):
            loss = model.training_step(batch, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if rn:
            clamp_norm_gates(model)

    times = _timed(step, dev, a.warmup, a.steps)
    extra = {"compile_backend": _compile_backend(dev)} if v["compile"] else {}
    return _result(times, 2 * b, dev, what=f"DANN ResNet-50 norm={norm}, {variant}", batch=f"{b}+{b}", size=s, **extra)


def backbone_step(check: Check, base: torch.nn.Module, variant: str) -> dict:
    a, v, dev = check.args, VARIANTS[variant], check.args.device
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fmt = torch.channels_last if v["cl"] else torch.contiguous_format
    net = copy.deepcopy(base).to(dev, memory_format=fmt).train()
    if v["compile"]:
        net.compile(backend=_compile_backend(dev))  # in place, as the method's compile option does
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(2 * a.batch, 3, a.size, a.size, device=dev).contiguous(memory_format=fmt)

    def step(i):
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=v["bf16"]):
            out = net(x)
        opt.zero_grad(set_to_none=True)
        out.float().sum().backward()
        opt.step()

    times = _timed(step, dev, a.warmup, a.steps)
    extra = {"compile_backend": _compile_backend(dev)} if v["compile"] else {}
    return _result(times, 2 * a.batch, dev, what=f"ResNet-50 backbone only (ceiling), {variant}",
                   batch=f"{a.batch}+{a.batch}", size=a.size, **extra)


def cmkd_run(check: Check, model: str, precision: str) -> dict:
    """One :func:`benchmarks.cmkd_step.main` run (its own argument parser), its line parsed."""
    from benchmarks import cmkd_step

    a = check.args
    argv = ["cmkd_step", "--model", model, "--batch", str(a.batch), "--size", str(a.size), "--steps", str(a.steps),
            "--warmup", str(a.warmup), "--precision", precision, "--device", a.device]
    if a.smoke:
        argv.append("--tiny")
    buf, saved = io.StringIO(), sys.argv
    sys.argv = argv
    try:
        if a.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with contextlib.redirect_stdout(buf):
            cmkd_step.main()
    finally:
        sys.argv = saved
    line = buf.getvalue().strip().splitlines()[-1]
    m = re.search(r"([\d.]+) ms/step, ([\d.]+) images/s", line)
    return {"what": f"CMKD CLIP {model}{' (tiny)' if a.smoke else ''}, {precision}", "line": line,
            "ms_per_step": float(m.group(1)) if m else None, "images_per_s": float(m.group(2)) if m else None,
            "timed_steps": a.steps}


def throughput(check: Check, entry: dict) -> None:
    from lightning_da.models import build_backbone

    torch.manual_seed(0)
    base = build_backbone("resnet50", pretrained=False)
    for variant in VARIANTS:
        d = check.item(entry, f"dann {variant}", dann_step, check, base, variant)
        c = check.item(entry, f"ceiling {variant}", backbone_step, check, base, variant)
        if d and c and d.get("images_per_s") and c.get("images_per_s"):
            d["fraction_of_ceiling"] = round(d["images_per_s"] / c["images_per_s"], 3)
    for variant in ("fp32", "bf16"):
        r = check.item(entry, f"dann norm=rn {variant}", dann_step, check, base, variant, "rn")
        bn = entry["items"].get(f"dann {variant}", {})
        if r and r.get("images_per_s") and bn.get("images_per_s"):
            r["rn_over_bn_time"] = round(bn["images_per_s"] / r["images_per_s"], 3)
    check.write()
    for model in ("RN50", "ViT-B-16"):
        for precision in ("32", "bf16"):
            check.item(entry, f"cmkd {model} {'fp32' if precision == '32' else precision}", cmkd_run, check, model, precision)


# ---------------------------------------------------------------------- 4. DDP
def ddp_run(check: Check) -> dict:
    a = check.args
    steps = 3 if a.smoke else a.ddp_steps
    overrides = ["trainer=ddp" if a.device == "cuda" else "trainer=ddp_cpu", "trainer.devices=1", "data=digits_bundled",
                 "logger=none", "callbacks=none", "trainer.enable_progress_bar=false", f"trainer.max_steps={steps}",
                 "trainer.max_epochs=1", f"data.iters_per_epoch={steps}"]
    try:
        res = run_train(overrides, Path(a.work) / "ddp")
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return {"overrides": overrides, "steps_requested": steps, "steps_run": res.get("steps"), "world_size": res.get("world_size"),
            "last_target_acc": _acc(res.get("last", {}).get("test/target_acc")), "train_wall_s": res.get("wall_time_s")}


def ddp(check: Check, entry: dict) -> None:
    check.item(entry, "dann digits_bundled", ddp_run, check)


PARTS = [("environment", environment), ("digits", digits), ("throughput", throughput), ("ddp", ddp)]


# ---------------------------------------------------------------------- report
def _summary(part: str, name: str, r: dict) -> str:
    if r.get("status") != "ok":
        return r.get("error", "")[:200].replace("|", "/").replace("\n", " ")
    if part == "environment":
        return (f"torch {r['torch']} (CUDA {r['cuda_build']}), GPU {r['gpu']}, lightning {r['lightning']}, torchvision "
                f"{r['torchvision']}, hydra {r['hydra-core']}, omegaconf {r['omegaconf']}, open_clip {r['open_clip_torch']}")
    if part == "digits":
        return (f"{r['steps_run']} of {r['protocol_steps']} steps: last {r['last_target_acc']}, best ({r['best_monitor']}) "
                f"{r['best_target_acc']}, oracle {r['oracle_target_acc']} vs TLlib {r['published_tllib']}; {r['train_wall_s']} s")
    if part == "ddp":
        return f"world size {r['world_size']}, {r['steps_run']} steps, last target acc {r['last_target_acc']}"
    text = f"{r.get('images_per_s')} images/s ({r.get('ms_per_step')} ms/step)"
    for key, label in (("fraction_of_ceiling", "of ceiling"), ("rn_over_bn_time", "x bn time"), ("peak_gpu_mem_gib", "GiB peak")):
        if key in r:
            text += f", {r[key]} {label}"
    return text


def markdown(report: dict) -> str:
    lines = [f"# GPU check ({'smoke, ' if report['smoke'] else ''}device {report['device']}, "
             f"{report.get('elapsed_s', 0)} s of {report['budget_s']} s budget)", "",
             "| part | item | status | result | wall s |", "|---|---|---|---|---|"]
    for part, entry in report["parts"].items():
        if not entry["items"] or entry["status"] not in ("ok", "running"):
            lines.append(f"| {part} | - | {entry['status']} | {entry.get('error', '')[:200]} | {entry.get('wall_s', '')} |")
        for name, r in entry["items"].items():
            lines.append(f"| {part} | {name} | {r['status']} | {_summary(part, name, r)} | {r.get('wall_s', '')} |")
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=420.0, help="overall time budget; later items are skipped past it")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, every part")
    ap.add_argument("--data", default="../shared/data", help="paths.data_dir (MNIST/raw, usps*.bz2)")
    ap.add_argument("--digits-steps", type=int, default=None, help=f"trainer.max_steps of each digits run (default: the full {PROTOCOL_STEPS})")
    ap.add_argument("--ddp-steps", type=int, default=20)
    ap.add_argument("--parts", nargs="+", choices=[n for n, _ in PARTS], default=[n for n, _ in PARTS],
                    help="run only these parts (the others are recorded as 'skipped: not selected')")
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if available (cpu with --smoke)")
    ap.add_argument("--work", default=None, help="run folders of the training parts (default: a temporary folder)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = ap.parse_args(argv)
    if args.device is None:
        args.device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda, but CUDA is not available")
    args.work = args.work or tempfile.mkdtemp(prefix="gpu_check_")
    args.batch, args.size, args.warmup, args.steps = (2, 32, 1, 2) if args.smoke else (32, 224, 3, 10)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    check = Check(args)
    check.write()
    for name, fn in PARTS:
        if name not in args.parts:
            check.report["parts"][name] = {"status": "skipped: not selected", "items": {}}
            continue
        print(f"gpu_check: {name} ({check.left():.0f} s of budget left)", flush=True)
        check.part(name, fn, always=name == "environment")  # instant, and says what machine this was
    print(markdown(check.report), flush=True)
    return check.report


if __name__ == "__main__":
    main()
