"""ADDA's GAN-style adversarial losses (Tzeng et al., "Adversarial Discriminative Domain Adaptation",
CVPR 2017, Eq. 2 and 3).

Convention as in :mod:`lightning_da.losses.adversarial`: the discriminator outputs a logit, source is
label 1 and target label 0, ``sigma`` is the logistic function.

* Discriminator (Eq. 2): ``L_D = 1/2 [ mean_i -log sigma(d_s,i) + mean_j -log(1 - sigma(d_t,j)) ]``,
  the DANN domain loss (:func:`~lightning_da.losses.adversarial.dann_loss`), on features the
  discriminator step does not back-propagate into.
* Target encoder (Eq. 3, the "inverted label" GAN loss): ``L_M = mean_j -log sigma(d_t,j)``, i.e.
  the target features are trained to be labelled *source*. ADDA argues this gives stronger
  gradients early on than minimising ``-L_D`` (what a gradient reversal layer does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_da.losses.adversarial import dann_loss


def adda_discriminator_loss(d_source: torch.Tensor, d_target: torch.Tensor) -> torch.Tensor:
    """``1/2 [ mean BCE(d_s, 1) + mean BCE(d_t, 0) ]`` on discriminator logits (ADDA Eq. 2)."""
    return dann_loss(d_source, d_target)


def adda_generator_loss(d_target: torch.Tensor) -> torch.Tensor:
    """``mean_j -log sigma(d_t,j)`` = ``mean BCE(d_t, 1)``: target features labelled source (ADDA Eq. 3)."""
    return F.binary_cross_entropy_with_logits(d_target, torch.ones_like(d_target))
