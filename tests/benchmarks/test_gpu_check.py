"""The GPU check kit's smoke mode: every part runs (or records why not) on the CPU, and both files are written."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PARTS = {"environment": ["versions"], "digits": ["DANN", "CDAN+E"],
         "throughput": [f"{k} {v}" for v in ("fp32", "bf16", "bf16+channels_last", "bf16+channels_last+compile")
                        for k in ("dann", "ceiling")] + ["dann norm=rn fp32", "dann norm=rn bf16"]
         + [f"cmkd {m} {p}" for m in ("RN50", "ViT-B-16") for p in ("fp32", "bf16")],
         "ddp": ["dann digits_bundled"]}


def _smoke(tmp_path, *extra):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # a subprocess: the DDP part initialises (and destroys) a process group, kept out of the test process
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--out", str(out), "--smoke",
                           "--threads", "1", "--work", str(tmp_path / "work"), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_smoke_runs_every_part(tmp_path):
    report, md = _smoke(tmp_path)
    assert report["smoke"] and report["device"] == "cpu"
    assert list(report["parts"]) == list(PARTS)
    for part, items in PARTS.items():
        entry = report["parts"][part]
        assert entry["status"] == "ok", entry
        for name in items:
            r = entry["items"][name]
            if r["status"] == "ok":  # measured: numbers present
                continue
            assert r["status"] == "error" and r["error"], (part, name, r)
    env = report["parts"]["environment"]["items"]["versions"]
    assert env["torch"] and all(env[p] for p in ("lightning", "torchvision", "hydra-core", "omegaconf", "open_clip_torch"))
    for name in ("DANN", "CDAN+E"):
        r = report["parts"]["digits"]["items"][name]
        assert r["status"] == "ok", r
        assert r["steps_run"] == 3 and r["protocol_steps"] == 50_000 and not r["full_protocol"]
        assert 0 <= r["last_target_acc"] <= 100 and r["oracle_target_acc"] is not None
        assert "data=digits_bundled" in r["overrides"] and "trainer=cpu" in r["overrides"]
    tp = report["parts"]["throughput"]["items"]
    for name in ("dann fp32", "ceiling fp32", "dann bf16", "dann norm=rn fp32"):
        assert tp[name]["status"] == "ok" and tp[name]["images_per_s"] > 0 and tp[name]["timed_steps"] == 2, tp[name]
    assert "fraction_of_ceiling" in tp["dann fp32"] and "rn_over_bn_time" in tp["dann norm=rn fp32"]
    d = report["parts"]["ddp"]["items"]["dann digits_bundled"]
    assert d["status"] == "ok" and d["steps_run"] == 3 and d["world_size"] == 1 and "trainer=ddp_cpu" in d["overrides"]
    # the markdown table: a header and one row per item
    assert "| part | item | status | result | wall s |" in md
    for part, items in PARTS.items():
        for name in items:
            assert f"| {part} | {name} |" in md
    assert not (tmp_path / "work" / "ddp" / "checkpoints").exists()  # checkpoints removed after each run


def test_budget_spent_skips_and_still_writes(tmp_path):
    report, md = _smoke(tmp_path, "--budget-s", "0")
    parts = report["parts"]
    assert parts["environment"]["status"] == "ok"  # always recorded
    assert all(parts[p]["status"] == "skipped: time budget" for p in ("digits", "throughput", "ddp"))
    assert "skipped: time budget" in md
