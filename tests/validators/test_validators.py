"""Validators: each score against an independent computation, the callback in a run (monitor, errors), and
the same values from a 2-process CPU DDP evaluation as from one process."""

import json
import math
import subprocess
import sys
from itertools import product

import numpy as np
import pytest
import torch

from conftest import QUICK, ROOT, make_cfg
from lightning_da.train import build, train
from lightning_da.validators import VALIDATORS
from lightning_da.validators.scores import (bnm_score, class_ami_score, dev_score, domain_probabilities, entropy_score,
                                            im_score, snd_score)
from step_replay import softmax_np


def H(p):
    return -sum(x * math.log(x) for x in p if x > 0)


@pytest.fixture
def logits():
    torch.manual_seed(0)
    return torch.randn(12, 4) * 2


def test_entropy_im_bnm_against_loops(logits):
    p = softmax_np(logits.double().numpy())
    assert entropy_score(logits) == pytest.approx(-np.mean([H(row) for row in p]), rel=1e-5)
    assert im_score(logits) == pytest.approx(H(p.mean(0)) - np.mean([H(row) for row in p]), rel=1e-5)
    assert bnm_score(logits) == pytest.approx(np.linalg.svd(p, compute_uv=False).sum() / len(p), rel=1e-5)


def test_snd_against_loops(logits):
    p = softmax_np(logits.double().numpy())
    x = p / np.linalg.norm(p, axis=1, keepdims=True)
    ents = []
    for i in range(len(x)):
        sims = np.array([x[i] @ x[j] / 0.05 for j in range(len(x)) if j != i])
        ents.append(H(softmax_np(sims[None])[0]))
    assert snd_score(logits) == pytest.approx(np.mean(ents), rel=1e-4)


def test_dev_against_its_formula():
    torch.manual_seed(1)
    src, tgt = torch.randn(60, 5), torch.randn(40, 5) + 0.7
    sv_f, sv_z, sv_y = torch.randn(30, 5), torch.randn(30, 3), torch.randint(0, 3, (30,))
    p = domain_probabilities(src, tgt, sv_f).double().clamp(1e-6, 1 - 1e-6).numpy()
    w = (60 / 40) * p / (1 - p)
    loss = np.array([-math.log(softmax_np(sv_z[i:i + 1].double().numpy())[0, sv_y[i]]) for i in range(30)])
    lw = w * loss
    eta = -np.cov(lw, w)[0, 1] / np.var(w, ddof=1)
    assert dev_score(src, tgt, sv_f, sv_z, sv_y) == pytest.approx(-(lw.mean() + eta * w.mean() - eta), rel=1e-4)
    # the domain classifier separates separable domains
    far = domain_probabilities(torch.randn(50, 2), torch.randn(50, 2) + 8, torch.tensor([[0.0, 0.0], [8.0, 8.0]]))
    assert far[0] < 0.05 and far[1] > 0.95


def ami_reference(a, b):
    """AMI written out with exact hypergeometric probabilities (math.comb)."""
    n = len(a)
    ua, ub = sorted(set(a)), sorted(set(b))
    table = {(i, j): sum(1 for x, y in zip(a, b) if x == i and y == j) for i in ua for j in ub}
    ra = {i: sum(table[i, j] for j in ub) for i in ua}
    cb = {j: sum(table[i, j] for i in ua) for j in ub}
    mi = sum(c / n * math.log(n * c / (ra[i] * cb[j])) for (i, j), c in table.items() if c)
    emi = 0.0
    for i, j in product(ua, ub):
        for nij in range(max(1, ra[i] + cb[j] - n), min(ra[i], cb[j]) + 1):
            prob = math.comb(ra[i], nij) * math.comb(n - ra[i], cb[j] - nij) / math.comb(n, cb[j])
            emi += nij / n * math.log(n * nij / (ra[i] * cb[j])) * prob
    h = lambda counts: -sum(c / n * math.log(c / n) for c in counts.values())
    return (mi - emi) / (0.5 * (h(ra) + h(cb)) - emi)


def test_class_ami_against_reference():
    """Separated feature blobs: k-means recovers the blobs (up to relabelling), so ClassAMI equals the
    reference AMI between the blob labels and the predictions."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 20)
    directions = 10 * np.eye(3, 8)                        # blobs apart in direction (the score L2-normalises)
    features = torch.tensor(directions[labels] + 0.3 * rng.standard_normal((60, 8)), dtype=torch.float32)
    pred = np.where(rng.random(60) < 0.7, labels, rng.integers(0, 3, 60))
    logits = torch.nn.functional.one_hot(torch.tensor(pred), 3).float()
    assert class_ami_score(features, logits) == pytest.approx(ami_reference(list(labels), list(pred)), rel=1e-6)
    relabelled = torch.nn.functional.one_hot(torch.tensor((labels + 1) % 3), 3).float()
    assert class_ami_score(features, relabelled) == pytest.approx(1.0)
    noise = [class_ami_score(torch.tensor(rng.standard_normal((200, 8)), dtype=torch.float32),
                             torch.randn(200, 4, generator=torch.Generator().manual_seed(s))) for s in range(5)]
    assert abs(np.mean(noise)) < 0.02                     # unrelated clusterings: AMI ~ 0
    assert math.isfinite(class_ami_score(torch.randn(3, 8), torch.randn(3, 10)))   # fewer rows than classes


def test_class_ami_kmeans_threads_follow_torch(monkeypatch):
    """k-means runs on as many OpenMP threads as torch has (under CPU DDP, each process's share), not on
    the OpenMP runtime's default of every core."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_info

    seen, fit = [], KMeans.fit

    def recording_fit(self, *args, **kwargs):
        seen.extend(p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp")
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(KMeans, "fit", recording_fit)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        class_ami_score(torch.randn(40, 8), torch.randn(40, 3))
    finally:
        torch.set_num_threads(n)
    assert seen and set(seen) == {1}


def test_validators_in_a_run_and_as_monitor(tmp_path):
    res = train(make_cfg(tmp_path, ["method=dann", "monitor=val/validator/snd", *QUICK, "trainer.limit_val_batches=1.0",
                                    "callbacks.validators.max_samples=2000"]))
    row = res["history"][0]
    for name in VALIDATORS:
        assert f"val/validator/{name}" in row, name
    assert row["val/validator/source_acc"] == pytest.approx(row["val/source_acc"])   # the whole held-out split
    assert res["best"]["monitor"] == "val/validator/snd" and not res["best"]["oracle"]
    assert res["best"]["monitor_value"] == pytest.approx(row["val/validator/snd"])


def test_validator_monitor_errors(tmp_path, office_subset):
    with pytest.raises(ValueError, match="validator 'nope' is not computed"):
        build(make_cfg(tmp_path, ["monitor=val/validator/nope", *QUICK]))
    with pytest.raises(ValueError, match="needs a held-out source split"):
        build(make_cfg(tmp_path, ["data=office_caltech10", "data.source_holdout=0", "monitor=val/validator/dev",
                                  f"data.root={office_subset}", "data.num_workers=0", "backbone=resnet18",
                                  "backbone.pretrained=false", *QUICK]))


EVAL_SCRIPT = """
import json, sys
import lightning as L
from lightning_da.train import build, compose_config
cfg = compose_config(sys.argv[2:], sys.argv[1])
L.seed_everything(cfg.seed)
dm, model, trainer = build(cfg)
trainer.validate(model, datamodule=dm, verbose=False)
if trainer.is_global_zero:
    out = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/validator/")}
    json.dump(out, open(sys.argv[1] + "/validators.json", "w"))
"""


@pytest.mark.slow
def test_ddp_gives_the_same_validator_values(tmp_path):
    script = tmp_path / "evaluate.py"
    script.write_text(EVAL_SCRIPT)
    values = {}
    for trainer in ("cpu", "ddp_cpu"):
        out_dir = tmp_path / trainer
        out_dir.mkdir()
        env = {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
        proc = subprocess.run([sys.executable, str(script), str(out_dir), f"trainer={trainer}", "method=dann",
                               "callbacks.validators.max_samples=300", "logger=none", *QUICK],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        values[trainer] = json.loads((out_dir / "validators.json").read_text())
    assert set(values["cpu"]) == {f"val/validator/{n}" for n in VALIDATORS}
    for k, v in values["cpu"].items():
        assert values["ddp_cpu"][k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
