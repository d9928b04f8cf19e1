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

from lightning_da.losses import fixmatch_loss
from lightning_da.methods.base import Needs, SingleStepMethod


class FixMatch(SingleStepMethod):
    needs = Needs(strong_view=True)
    train_views = ("strong",)

    def __init__(self, *args, threshold: float = 0.9, strict: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"fixmatch threshold must be in [0, 1], got {threshold}")
        self.threshold, self.strict = float(threshold), bool(strict)

    def guidance(self, step):
        """The weak view's probabilities, from ``[x_s; x_weak]`` (the library's domain split)."""
        return self.forward_domains(step.x_source, step.views["weak"])[1][step.n_source:].softmax(-1)

    def transfer_loss(self, step):
        loss, mask, _ = fixmatch_loss(step.target_logits, step.guidance, self.threshold, self.strict)
        return loss, {"train/pseudo_label_ratio": mask.float().mean()}
