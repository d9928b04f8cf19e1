"""TensorBoard visuals: the t-SNE map keeps separated clusters apart (also with fewer rows than the
perplexity needs); a run writes the t-SNE and confusion figures."""

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import QUICK, make_cfg
from lightning_da.callbacks.visuals import EmbeddingVisuals, tsne
from lightning_da.train import train


def test_tsne_keeps_clusters_apart():
    torch.manual_seed(0)
    labels = torch.arange(3).repeat_interleave(40)
    x = torch.randn(3, 20)[labels] * 6 + torch.randn(120, 20)
    y = tsne(x, perplexity=15, iters=300)
    d = torch.cdist(y, y)
    d.fill_diagonal_(float("inf"))
    assert (labels[d.argmin(1)] == labels).float().mean() > 0.97
    few = tsne(x[::12], perplexity=30, iters=250)             # 10 rows: the perplexity is capped at 3
    assert few.shape == (10, 2) and torch.isfinite(few).all()
    with pytest.raises(ValueError, match="at least 250"):   # at build time, not at the end of fit
        EmbeddingVisuals(iters=100)


def test_run_writes_the_figures(tmp_path):
    train(make_cfg(tmp_path, ["method=dann", *QUICK]))
    files = sorted((tmp_path / "tensorboard").glob("events*"))
    tags = set()
    for f in files:
        acc = EventAccumulator(str(f))
        acc.Reload()
        tags |= set(acc.Tags()["images"])
    assert {"visuals/tsne", "visuals/target_confusion"} <= tags
