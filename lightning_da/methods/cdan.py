"""CDAN and CDAN+E: conditional domain-adversarial network (Long et al., NeurIPS 2018).

The discriminator sees the multilinear map of features and (detached) predictions,
``T(f, g) = g (outer) f`` (or the randomized map ``(R_f f) * (R_g g) / sqrt(d)`` when
``randomized=true``), through a gradient reversal layer:

    L = CE(z_s, y_s) + trade_off * L_CDAN

* CDAN:   ``L_CDAN = mean_i BCE(D(R(T_i)), d_i)`` with d = 1 for source rows, 0 for target rows.
* CDAN+E (``entropy_conditioning=true``): each row weighted by ``w_i = 1 + exp(-H(g_i))``,
  normalised within source and within target, with the GRL also on the entropy (see
  ``losses.adversarial.entropy_weights``), as in the CDAN / RN code.

The GRL coefficient in ``conf/method/cdan.yaml`` (and ``bsp.yaml``) is the CDAN / RN ``calc_coeff``:
alpha 10 over 10,000 iterations; built without a ``grl`` option, the class uses DANN's progress
schedule over the whole run.
The default heads are TLlib's (discriminator with BatchNorm, no dropout; learning-rate multiplier 1;
PyTorch's default classifier init). The original CDAN / RN network is
``discriminator: {hidden: 1024, batch_norm: false, dropout: 0.5}``, ``lr_mult`` 10 on the
bottleneck, classifier and discriminator, ``classifier_init: xavier`` (pinned by the RN experiments).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_da.losses import cdan_loss, entropy_weights, multilinear_map
from lightning_da.methods.base import SingleStepMethod
from lightning_da.models.heads import DomainDiscriminator


class CDAN(SingleStepMethod):
    def __init__(self, *args, discriminator: dict | None = None, grl: dict | None = None,
                 entropy_conditioning: bool = True, randomized: bool = False, randomized_dim: int = 1024, **kwargs):
        super().__init__(*args, **kwargs)
        d, c = self.bottleneck.out_features, self.num_classes
        self._randomized, self._randomized_dim = randomized, randomized_dim
        self.grl = self.make_grl(**(grl or {}))
        if randomized:
            self.register_buffer("random_f", torch.randn(d, randomized_dim))
            self.register_buffer("random_g", torch.randn(c, randomized_dim))
        self.discriminator = DomainDiscriminator(randomized_dim if randomized else d * c, **(discriminator or {}))
        self.entropy_conditioning = entropy_conditioning

    def conditioning(self, features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        if self._randomized:
            return (features @ self.random_f) * (probs @ self.random_g) / math.sqrt(self._randomized_dim)
        return multilinear_map(features, probs)

    def transfer_loss(self, step):
        coeff = self.grl.coeff  # before the GRL call, which may step a warm-start schedule
        probs = F.softmax(step.logits, dim=1).detach()
        d = self.discriminator(self.grl(self.conditioning(step.features, probs)))
        weights = entropy_weights(step.logits, step.n_source, coeff) if self.entropy_conditioning else None
        return cdan_loss(d, step.n_source, weights), {"train/grl_coeff": coeff}
