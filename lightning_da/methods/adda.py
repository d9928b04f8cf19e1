"""ADDA: adversarial discriminative domain adaptation (Tzeng et al., CVPR 2017), as TLlib runs it.

Two phases, by epoch (Lightning manual optimisation):

1. **Source pre-training** (the first ``pretrain_epochs`` epochs): ``E`` (backbone + bottleneck) and
   the classifier ``C`` are trained on the source batch alone, ``L = CE(C(E(x_s)), y_s)``, with their
   own optimiser at ``pretrain_lr`` and their own schedule (counted from 0).
2. **Adaptation** (the remaining epochs): at the start of the first adaptation epoch ``E`` is copied
   into a frozen *source encoder* ``E_s``; ``E`` goes on as the *target encoder* ``E_t``, initialised
   from ``E_s``. The classifier stays fixed (TLlib optimises the target model without its head) and
   evaluation is ``C(E_t(x))``. With ``f_s = E_s(x_s)`` (no gradient) and ``f_t = E_t(x_t)``:

   * ``objective="grl"`` (default; TLlib's ``adda.py`` since the ``tllib`` release): one joint step of
     ``E_t`` and the discriminator ``D`` on
     ``L = 1/2 [ BCE(D(R(f_s)), 1) + BCE(D(R(f_t)), 0) ]`` with ``R`` the warm-start gradient
     reversal ``coeff(i) = (hi - lo) (2 / (1 + exp(-alpha i / max_iters)) - 1) + lo`` counted over the
     adaptation steps (TLlib: alpha 1, lo 0, hi 2, max_iters 1000). ``D`` sees ``[f_s; f_t]`` in one
     call. No classification loss in this phase (TLlib's ``train`` has none).
   * ``objective="gan"`` (the paper's Eq. 2 and 3): first a discriminator step on
     ``L_D = 1/2 [ BCE(D(f_s), 1) + BCE(D(f_t.detach()), 0) ]``, then a target-encoder step with the
     inverted label ``L_M = BCE(D(f_t), 1)`` through the just-updated ``D`` (``losses.adversarial_gan``).
     ``grl`` is not used.

Defaults are TLlib's (``examples/domain_adaptation/image_classification/adda.py``): 3 pre-training
epochs at ``pretrain_lr`` 0.001 (the adaptation lr is ``optimizer.lr``), discriminator with hidden
width 1024 (BatchNorm, two hidden layers), one SGD over ``E_t`` and ``D`` (here two optimisers with the
same settings, which for SGD is the same update), the inv schedule restarted at the adaptation. The
three optimisers are named groups (``pretrain``, ``encoder``, ``discriminator``); a schedule that runs
over ``total_steps`` gets the length of its phase.

Flags and deviations:

* ``source_dropout=true`` (TLlib): TLlib freezes the source model with ``freeze_bn()`` only, so its
  BatchNorm layers use their running statistics but its dropout layers stay active: ``f_s`` is a
  dropout-noised feature. ``false`` runs ``E_s`` fully in evaluation mode.
* TLlib's pre-training and adaptation are separate loops; here they are epochs of one run, so
  ``trainer.max_epochs`` counts both (TLlib's digits run: 3 + 20 epochs). Validation during
  pre-training evaluates the model being pre-trained, as TLlib's does.
* The paper's target encoder also starts from the source encoder; its discriminator is a 500-500 MLP
  without BatchNorm (``discriminator: {hidden: 500, batch_norm: false}``) and the paper's solver is
  Adam; with ``objective=gan`` and a BatchNorm discriminator the encoder step runs ``D`` in training
  mode on the target batch alone (batch statistics of ``f_t``).
* Older TLlib (``dalib``) ``adda.py`` shared one network between domains, kept the classification
  loss and used the GAN loss through a gradient *scaling* layer; that variant is not implemented.

At the digits protocol's budget (batch 32, 5,000 steps; TLlib runs batch 128 for 3 + 20 epochs of 2,500
steps) on the library's shared digits network (``digits/adda``) these defaults collapse (TLlib's network,
``digits_tllib/adda``, does not): the target encoder, trained by the adversarial loss alone, degenerates
within 1-2 adaptation epochs (about 10% on target *and* source through ``E_t``), with either objective
and with ``pretrain_lr`` 0.001 or 0.01. Measured on MNIST -> USPS (``docs/methods/adversarial.md``):
``method.pretrain_lr=0.01 optimizer.lr=0.001`` (a pre-training at the protocol's lr, an adaptation at
a tenth of it) is stable and ends above source only; it is a deviation, not TLlib's setting.

Forwarding source and target through different encoders, ADDA cannot give a domain-aware norm its
``[source; target]`` split (``norm=dsbn/transnorm/rn`` is refused); ``extra_losses`` have no
place in its steps and are refused (and it takes no ``trade_off``). ``classifier_init`` initialises
its linear classifier.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_da.losses.adversarial_gan import adda_discriminator_loss, adda_generator_loss
from lightning_da.methods.base import DAMethod, Needs, OptimGroup
from lightning_da.models.heads import Classifier, DomainDiscriminator

TLLIB_GRL = {"alpha": 1.0, "max_iters": 1000, "lo": 0.0, "hi": 2.0, "auto_step": True}


class ADDA(DAMethod):
    automatic_optimization = False
    needs = Needs(domain_split=False)
    unused_options = ("extra_losses",)

    def __init__(self, *args, pretrain_epochs: int = 3, pretrain_lr: float | None = 0.001, objective: str = "grl",
                 discriminator: dict | None = None, grl: dict | None = None, source_dropout: bool = True,
                 classifier_init: str | None = None, **kwargs):
        if objective not in ("grl", "gan"):
            raise ValueError(f"ADDA objective must be 'grl' (TLlib) or 'gan' (the paper), got {objective!r}")
        if pretrain_epochs < 0:
            raise ValueError(f"pretrain_epochs must be >= 0, got {pretrain_epochs}")
        super().__init__(*args, **kwargs)
        self.classifier = Classifier(self.bottleneck.out_features, self.num_classes, init=classifier_init or "default")
        self.discriminator = DomainDiscriminator(self.bottleneck.out_features, **(discriminator or {"hidden": 1024}))
        self.grl = self.make_grl(**{**TLLIB_GRL, **(grl or {})}) if objective == "grl" else None
        self.register_buffer("source_frozen", torch.tensor(False))

    def finish_build(self) -> None:
        """After the norm conversion: the frozen source encoder ``E_s``, a copy of the converted
        backbone + bottleneck (filled with the pre-trained weights when adaptation starts)."""
        super().finish_build()
        self.source_encoder = nn.Sequential(copy.deepcopy(self.backbone), copy.deepcopy(self.bottleneck))
        self.source_encoder.requires_grad_(False)
        for m in self.source_encoder.modules():  # AdaBN re-estimates the evaluated model only
            if getattr(m, "adapt_to_target", False):
                m.adapt_to_target = False

    def domain_split_refusal(self) -> str:
        return ("ADDA forwards source and target through different encoders, so it cannot give a domain-aware norm "
                "(dsbn/transnorm/rn) its [source; target] split; use norm=bn or adabn")

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    # ------------------------------------------------------------------ phases
    def adapting(self) -> bool:
        return self.current_epoch >= self.hparams.pretrain_epochs

    def on_train_epoch_start(self) -> None:
        """At the first adaptation epoch, copy the pre-trained encoder into ``E_s`` (once: the flag is
        saved, so a resumed run keeps the ``E_s`` it had)."""
        if self.adapting() and not bool(self.source_frozen):
            self.source_encoder[0].load_state_dict(self.backbone.state_dict())
            self.source_encoder[1].load_state_dict(self.bottleneck.state_dict())
            self.source_frozen.fill_(True)

    def source_features(self, x: torch.Tensor) -> torch.Tensor:
        """``E_s(x)`` without gradient: BatchNorm on running statistics, dropout as ``source_dropout``."""
        self.source_encoder.train(self.hparams.source_dropout)
        for m in self.source_encoder.modules():
            if isinstance(m, _BatchNorm):
                m.eval()
        with torch.no_grad():
            return self.source_encoder(self.in_memory_format(x))

    # ------------------------------------------------------------------ steps
    def pretrain_step(self, xs, ys) -> dict:
        z = self(xs)
        loss = F.cross_entropy(z, ys)
        self.update(loss, "pretrain")
        logs = {}
        if self.logging_step():
            logs = {"train/loss": loss.detach(), "train/loss_cls": loss.detach(),
                    "train/source_acc": (z.detach().argmax(1) == ys).float().mean()}
        return logs

    def adapt_step(self, xs, xt) -> dict:
        f_s, f_t = self.source_features(xs), self.features(xt)
        ns = len(f_s)
        logs = {}
        if self.hparams.objective == "grl":
            coeff = self.grl.coeff  # before the call, which steps the warm-start schedule
            d = self.discriminator(self.grl(torch.cat([f_s, f_t])))
            loss = loss_d = adda_discriminator_loss(d[:ns], d[ns:])
            self.update(loss, "encoder", "discriminator")
            if self.logging_step():
                logs["train/grl_coeff"] = coeff
        else:
            d = self.discriminator(torch.cat([f_s, f_t.detach()]))
            loss_d = adda_discriminator_loss(d[:ns], d[ns:])
            self.update(loss_d, "discriminator")
            loss = adda_generator_loss(self.discriminator(f_t))
            self.update(loss, "encoder")
        if self.logging_step():
            with torch.no_grad():
                domain_acc = torch.cat([d[:ns] > 0, d[ns:] <= 0]).float().mean()
            logs.update({"train/loss": loss.detach(), "train/loss_transfer": loss.detach(),
                         "train/loss_discriminator": loss_d.detach(), "train/domain_acc": domain_acc})
        return logs

    def training_step(self, batch: dict, batch_idx: int) -> None:
        (xs, ys), (xt, _) = batch["source"], batch["target"]
        logs = self.adapt_step(xs, xt) if self.adapting() else self.pretrain_step(xs, ys)
        if logs:
            self.log_train(logs)

    # ------------------------------------------------------------------ optimisers
    def optimizer_groups(self) -> dict[str, OptimGroup]:
        """``pretrain`` (encoder and classifier at ``pretrain_lr``, the pre-training epochs) and, for the
        adaptation epochs, ``encoder`` (the target encoder) and ``discriminator``."""
        encoder = [("backbone", self.backbone), ("bottleneck", self.bottleneck)]
        first = self.hparams.pretrain_epochs
        return {"pretrain": OptimGroup([*encoder, ("classifier", self.classifier)], lr=self.hparams.pretrain_lr,
                                       epochs=(0, first)),
                "encoder": OptimGroup(encoder, epochs=(first, None)),
                "discriminator": OptimGroup([("discriminator", self.discriminator)], epochs=(first, None))}
