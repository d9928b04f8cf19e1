"""DANN: domain-adversarial neural network (Ganin & Lempitsky, ICML 2015; JMLR 2016).

A discriminator D predicts the domain of the bottleneck features through a gradient reversal
layer, so the feature extractor learns to confuse it:

    L = CE(C(f_s), y_s) + trade_off * 1/2 [ BCE(D(R(f_s)), 1) + BCE(D(R(f_t)), 0) ]

R is the GRL with coefficient ``lambda_p = 2 / (1 + exp(-10 p)) - 1`` over training progress p
(``grl.max_iters: null``); ``grl: {alpha: 1, max_iters: 1000, auto_step: true}`` gives the
warm-start GRL instead.
"""

from __future__ import annotations

from lightning_da.losses import dann_loss
from lightning_da.methods.base import SingleStepMethod
from lightning_da.models.heads import DomainDiscriminator


class DANN(SingleStepMethod):
    def __init__(self, *args, discriminator: dict | None = None, grl: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.grl = self.make_grl(**(grl or {}))
        self.discriminator = DomainDiscriminator(self.bottleneck.out_features, **(discriminator or {}))

    def transfer_loss(self, step):
        coeff = self.grl.coeff  # before the GRL call, which may step a warm-start schedule
        d = self.discriminator(self.grl(step.features))
        return dann_loss(d[:step.n_source], d[step.n_source:]), {"train/grl_coeff": coeff}
