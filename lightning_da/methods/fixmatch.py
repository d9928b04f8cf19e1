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
import torch.nn.functional as F

from lightning_da.losses import fixmatch_loss
from lightning_da.methods.base import DAMethod


class FixMatch(DAMethod):
    needs_strong_view = True

    def __init__(self, *args, threshold: float = 0.9, strict: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"fixmatch threshold must be in [0, 1], got {threshold}")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        (xs, ys), ((x_weak, x_strong), _) = batch["source"], batch["target"]
        ns = len(xs)
        with torch.no_grad():
            probs_weak = self.forward_domains(xs, x_weak)[1][ns:].softmax(-1)
        _, z = self.forward_domains(xs, x_strong)
        loss_cls = F.cross_entropy(z[:ns], ys)
        loss_st, mask, pseudo = fixmatch_loss(z[ns:], probs_weak, self.hparams.threshold, self.hparams.strict)
        loss = loss_cls + self.trade_off * loss_st
        logs = {}
        if self.extra:
            loss_extra, terms = self.extra(z[ns:])
            loss = loss + loss_extra
            logs.update({f"train/loss_{k}": v for k, v in terms.items()})
        if self.logging_step():
            with torch.no_grad():
                logs["train/source_acc"] = (z[:ns].argmax(1) == ys).float().mean()
            self.log_train({"train/loss": loss, "train/loss_cls": loss_cls, "train/loss_self_training": loss_st,
                            "train/pseudo_label_ratio": mask.float().mean(), **logs})
        return loss
