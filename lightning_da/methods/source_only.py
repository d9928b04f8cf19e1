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
        self.needs = dataclasses.replace(self.needs, domain_split=forward_target)
        if self.extra and not forward_target:
            raise ValueError("source_only: extra_losses act on target logits; set method.forward_target=true")

    def transfer_loss(self, features, logits, n_source):
        return features.new_zeros(()), {}

    def forward_domains(self, xs: torch.Tensor, xt: torch.Tensor):
        if self.hparams.forward_target:
            return super().forward_domains(xs, xt)
        f = self.features(xs)
        return f, self.classify(f)
