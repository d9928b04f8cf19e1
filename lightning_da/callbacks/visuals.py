"""TensorBoard figures at the end of fit: a t-SNE map of source and target features (coloured by
domain and by class) and the target confusion matrix.

t-SNE (van der Maaten & Hinton 2008; Barnes-Hut, van der Maaten 2014) is scikit-learn's ``TSNE``:
PCA initialisation, learning rate ``max(N / 12 / 4, 50)``, early exaggeration 12 for the first 250
iterations. The confusion matrix is torchmetrics' ``multiclass_confusion_matrix``.
"""

from __future__ import annotations

import logging

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torchmetrics.functional.classification import multiclass_confusion_matrix

from lightning_da.eval_pass import eval_mode

log = logging.getLogger(__name__)


def tsne(x: torch.Tensor, perplexity: float = 30.0, iters: int = 500, seed: int = 0) -> torch.Tensor:
    """A 2-d t-SNE embedding of the rows of ``x`` (scikit-learn's Barnes-Hut ``TSNE``, ``iters`` >= 250
    iterations); the perplexity is capped at ``(N - 1) / 3`` so that few rows still have enough neighbours."""
    from sklearn.manifold import TSNE   # imported here: only the end of fit needs it

    perplexity = min(perplexity, (len(x) - 1) / 3)
    emb = TSNE(2, perplexity=perplexity, max_iter=iters, random_state=seed).fit_transform(x.detach().float().cpu().numpy())
    return torch.from_numpy(emb).float()


class EmbeddingVisuals(L.Callback):
    """At the end of fit, add ``visuals/tsne`` and ``visuals/target_confusion`` figures to TensorBoard."""

    def __init__(self, max_per_domain: int = 500, perplexity: float = 30.0, iters: int = 500, seed: int = 0):
        if iters < 250:   # fail when the run is built, not at the end of fit
            raise ValueError(f"visuals iters={iters}: scikit-learn's TSNE runs at least 250 iterations (its early-exaggeration phase)")
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
        confusion = multiclass_confusion_matrix(zt.argmax(1), yt, c).float()   # rows true, columns predicted
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
