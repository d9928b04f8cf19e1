"""FixMatch for UDA (Sohn et al., NeurIPS 2020; as TLlib applies it to domain adaptation).

Each target sample comes as a weak and a strong view (``data.strong_target_view``, switched on by
this method). Pseudo labels come from the weak view without gradient; the strong view is trained
on the confident ones:

    L = CE(z_s, y_s) + trade_off * mean_i 1[max_c p_ic(weak) > tau] CE(z_i(strong), y_hat_i)

(:func:`~lightning_da.losses.fixmatch_loss`; ``strict=false`` gives ``>=``). TLlib's defaults:
``tau = 0.9``, trade-off 1. The labelled pass is ``[x_s; x_strong]`` in one call (the library's
domain-split contract, so domain-aware norms work); the weak pass is ``[x_s; x_weak]`` under
``no_grad`` (TLlib forwards the weak target batch alone; with plain BatchNorm the pseudo labels here
use joint source/target batch statistics instead).
"""

from __future__ import annotations

import torch

from lightning_da.losses import fixmatch_loss
from lightning_da.methods.base import Needs, SingleStepMethod


class FixMatch(SingleStepMethod):
    needs = Needs(strong_view=True)

    def __init__(self, *args, threshold: float = 0.9, strict: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"fixmatch threshold must be in [0, 1], got {threshold}")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        """Pseudo labels from the weak view, then the base step on ``[x_s; x_strong]``."""
        (xs, ys), ((x_weak, x_strong), idx) = batch["source"], batch["target"]
        with torch.no_grad():
            self._probs_weak = self.forward_domains(xs, x_weak)[1][len(ys):].softmax(-1)
        return super().training_step({"source": (xs, ys), "target": (x_strong, idx)}, batch_idx)

    def transfer_loss(self, features, logits, n_source):
        loss, mask, _ = fixmatch_loss(logits[n_source:], self._probs_weak, self.hparams.threshold, self.hparams.strict)
        return loss, {"train/pseudo_label_ratio": mask.float().mean()}
