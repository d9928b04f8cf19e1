"""TensorBoard visuals: the t-SNE map keeps separated clusters apart and matches the perplexity; a run
writes the t-SNE and confusion figures."""

import math

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import QUICK, make_cfg
from lightning_da.callbacks.visuals import _affinities, tsne
from lightning_da.train import train


def test_affinities_match_the_perplexity():
    torch.manual_seed(0)
    x = torch.randn(80, 5).double()
    p = _affinities(x, 10.0) * 2 * 80           # P_j|i + P_i|j; recompute the conditional rows
    d = torch.cdist(x, x).pow(2)
    d.fill_diagonal_(float("inf"))
    # each conditional row of the bisection has entropy log(perplexity)
    lo, hi = torch.full((80, 1), -50.0, dtype=torch.double), torch.full((80, 1), 50.0, dtype=torch.double)
    cond = None
    for _ in range(64):
        mid = (lo + hi) / 2
        cond = (-d * mid.exp()).softmax(1)
        h = -(cond * cond.clamp_min(1e-30).log()).sum(1, keepdim=True)
        lo, hi = torch.where(h > math.log(10), mid, lo), torch.where(h > math.log(10), hi, mid)
    torch.testing.assert_close(p, cond + cond.t())
    h = -(cond * cond.clamp_min(1e-30).log()).sum(1)
    torch.testing.assert_close(h, torch.full((80,), math.log(10.0), dtype=torch.double), atol=1e-6, rtol=0)


def test_tsne_keeps_clusters_apart():
    torch.manual_seed(0)
    labels = torch.arange(3).repeat_interleave(40)
    x = torch.randn(3, 20)[labels] * 6 + torch.randn(120, 20)
    y = tsne(x, perplexity=15, iters=300)
    d = torch.cdist(y, y)
    d.fill_diagonal_(float("inf"))
    assert (labels[d.argmin(1)] == labels).float().mean() > 0.97


def test_run_writes_the_figures(tmp_path):
    train(make_cfg(tmp_path, ["method=dann", *QUICK]))
    files = sorted((tmp_path / "tensorboard").glob("events*"))
    tags = set()
    for f in files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags |= set(acc.Tags()["images"])
    assert {"visuals/tsne", "visuals/target_confusion"} <= tags
