"""Source only: the classifier trained on labelled source data alone, ``L = CE(z_s, y_s)``.

By default only the source batch is forwarded, so BatchNorm statistics are source statistics (the
usual baseline). ``forward_target=true`` also forwards the target half in the same call (the
target then shapes BatchNorm statistics and can carry ``extra_losses``); only then can a
domain-aware norm be used.
"""

from __future__ import annotations

import dataclasses

import torch

from lightning_da.methods.base import SingleStepMethod


class SourceOnly(SingleStepMethod):
    unused_options = ("trade_off",)  # no transfer loss to weigh

    def __init__(self, *args, forward_target: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.forward_target = forward_target
        if self.extra and not forward_target:
            raise ValueError("source_only: extra_losses act on target logits; set method.forward_target=true")

    @classmethod
    def needs_for(cls, options):
        # the domain split exists only when the target is forwarded with the source
        return dataclasses.replace(cls.needs, domain_split=bool(options.get("forward_target", False)))

    def transfer_loss(self, step):
        return step.features.new_zeros(()), {}

    def forward_domains(self, xs: torch.Tensor, xt: torch.Tensor):
        if self.forward_target:
            return super().forward_domains(xs, xt)
        f = self.features(xs)
        return f, self.classify(f)
