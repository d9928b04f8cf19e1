"""TensorBoard figures at the end of fit: a t-SNE map of source and target features (coloured by
domain and by class) and the target confusion matrix.

t-SNE (van der Maaten & Hinton 2008) is computed exactly in torch: Gaussian affinities with a
per-point bandwidth found by bisection to match ``perplexity``, symmetrised
``P = (P_j|i + P_i|j) / 2N``; Student-t affinities ``Q`` in 2-d; gradient descent on KL(P || Q) with
momentum and early exaggeration. Exact O(N^2), meant for the ~1,000 points shown here.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_da.predict import eval_mode

log = logging.getLogger(__name__)


def _affinities(x: torch.Tensor, perplexity: float) -> torch.Tensor:
    d = torch.cdist(x, x).pow(2)
    d.fill_diagonal_(float("inf"))
    target = torch.log(torch.tensor(perplexity, dtype=x.dtype))
    lo = torch.full((len(x), 1), -50.0, dtype=x.dtype)   # bisection on log(beta), beta = 1 / (2 sigma^2)
    hi = torch.full((len(x), 1), 50.0, dtype=x.dtype)
    for _ in range(64):
        mid = (lo + hi) / 2
        logits = -d * mid.exp()
        p = logits.softmax(1)
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(1, keepdim=True)
        too_flat = entropy > target          # too wide: raise beta
        lo = torch.where(too_flat, mid, lo)
        hi = torch.where(too_flat, hi, mid)
    p = (-d * ((lo + hi) / 2).exp()).softmax(1)
    return (p + p.t()) / (2 * len(x))


def tsne(x: torch.Tensor, perplexity: float = 30.0, iters: int = 500, seed: int = 0) -> torch.Tensor:
    """A 2-d t-SNE embedding of the rows of ``x`` (float64 inside)."""
    x = x.double()
    x = (x - x.mean(0)) / x.std().clamp_min(1e-12)
    n = len(x)
    p = _affinities(x, min(perplexity, (n - 1) / 3)).clamp_min(1e-12)
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, 2, generator=g, dtype=torch.double) * 1e-4
    velocity = torch.zeros_like(y)
    for it in range(iters):
        exaggeration = 12.0 if it < 100 else 1.0
        num = 1.0 / (1.0 + torch.cdist(y, y).pow(2))
        num.fill_diagonal_(0.0)
        q = (num / num.sum()).clamp_min(1e-12)
        grad = 4 * (((exaggeration * p - q) * num).unsqueeze(2) * (y.unsqueeze(1) - y.unsqueeze(0))).sum(1)
        velocity = (0.5 if it < 250 else 0.8) * velocity - 200.0 * grad
        y = y + velocity
        y = y - y.mean(0)
    return y.float()


class EmbeddingVisuals(L.Callback):
    """At the end of fit, add ``visuals/tsne`` and ``visuals/target_confusion`` figures to TensorBoard."""

    def __init__(self, max_per_domain: int = 500, perplexity: float = 30.0, iters: int = 500, seed: int = 0):
        self.max_per_domain, self.perplexity, self.iters, self.seed = max_per_domain, perplexity, iters, seed

    def _features(self, module, dataset, dm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from lightning_da.validators import predict_subset

        g = torch.Generator().manual_seed(self.seed)
        idx = torch.randperm(len(dataset), generator=g)[:self.max_per_domain].tolist()
        out = predict_subset(module, dataset, idx, dm.eval_batch_size, dm.num_workers)
        return out["features"].cpu(), out["logits"].cpu(), out["labels"].cpu()

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        tb = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
        dm = trainer.datamodule
        if tb is None or not trainer.is_global_zero or not hasattr(dm, "domains") or not hasattr(module, "predict_features"):
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        source = dm.domains[dm.source_names[0]].train_eval
        target = dm.domains[dm.target_name].train_eval
        with eval_mode(module):
            fs, _, ys = self._features(module, source, dm)
            ft, zt, yt = self._features(module, target, dm)
        emb = tsne(torch.cat([fs, ft]), self.perplexity, self.iters, self.seed)
        ns = len(fs)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 5))
        ax1.scatter(*emb[:ns].T, s=6, c="tab:blue", label=f"source ({dm.source_names[0]})")
        ax1.scatter(*emb[ns:].T, s=6, c="tab:red", label=f"target ({dm.target_name})")
        ax1.legend(loc="best", fontsize=8)
        ax1.set_title("t-SNE of features, by domain")
        colours = dict(cmap="tab20", vmin=0, vmax=max(int(torch.cat([ys, yt]).max()), 1))  # one class colour map for both
        ax2.scatter(*emb[:ns].T, s=6, c=ys, marker="o", **colours)
        ax2.scatter(*emb[ns:].T, s=10, c=yt, marker="x", **colours)
        ax2.set_title("by class (o source, x target)")
        fig.tight_layout()
        tb.experiment.add_figure("visuals/tsne", fig, global_step=trainer.global_step)
        plt.close(fig)
        c = module.num_classes
        confusion = torch.zeros(c, c)
        confusion.index_put_((yt, zt.argmax(1)), torch.ones(len(yt)), accumulate=True)
        fig, ax = plt.subplots(figsize=(5 + 0.15 * c, 4.5 + 0.15 * c))
        ax.imshow(confusion / confusion.sum(1, keepdim=True).clamp_min(1), cmap="Blues", vmin=0, vmax=1)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(f"target confusion (rows normalised; {len(yt)} target training samples)")
        if c <= 20:
            names = list(getattr(dm, "classes", range(c)))
            ax.set_xticks(range(c), names, rotation=90, fontsize=7)
            ax.set_yticks(range(c), names, fontsize=7)
        fig.tight_layout()
        tb.experiment.add_figure("visuals/target_confusion", fig, global_step=trainer.global_step)
        plt.close(fig)
        tb.experiment.flush()
