"""BSP: batch spectral penalization (Chen et al., "Transferability vs. Discriminability: Batch
Spectral Penalization for Adversarial Domain Adaptation", ICML 2019), on top of CDAN (+E) or DANN.

The largest singular values of the source and target bottleneck-feature matrices are penalised, so
that the other eigen-directions keep their discriminative structure (``losses.spectral``):

    L = CE(z_s, y_s) + trade_off * [ L_adv + bsp_weight * sum_{i<=k} (sigma_i(F_s)^2 + sigma_i(F_t)^2) ]
        + sum_k w_k L_k(z_t)

``L_adv`` is the adversarial loss of ``adversary``:

* ``cdan`` (default; the paper's code ``BSP+CDAN.py``): :class:`~lightning_da.methods.cdan.CDAN`'s
  transfer loss (CDAN+E by default, ``entropy_conditioning``);
* ``dann`` (TLlib's ``bsp.py``): DANN's ``1/2 [BCE(D(R(f_s)), 1) + BCE(D(R(f_t)), 0)]`` with the
  discriminator on the features themselves (``entropy_conditioning`` must be false and ``randomized``
  off: neither exists in DANN).

The penalty's effective weight is ``trade_off * bsp_weight`` (both trade-offs are 1 in TLlib and the
paper's code, so the two coincide at the defaults).

Defaults: k = 1 and ``bsp_weight`` 1e-4 (the paper's code, and TLlib's digits scripts; TLlib's ``bsp.py``
default is 2e-4).

**Source pre-training** (``pretrain_epochs``, TLlib's ``bsp.py``: 3 epochs at ``--pretrain-lr`` 0.001):
the first ``pretrain_epochs`` epochs train on the source batch alone (only it is forwarded, as TLlib's
``utils.empirical_risk_minimization``), ``L = CE(z_s, y_s)``, at ``pretrain_lr`` under the configured
schedule counted from 0; then adaptation starts from those weights with fresh optimiser state (TLlib
builds a new SGD for it: the momentum buffers are cleared) at ``optimizer.lr`` under the schedule
counted from 0 again. ``trainer.max_epochs`` counts both phases (TLlib's digits run: 3 + 20). A GRL
stepped from ``global_step`` (``auto_step: false``) counts adaptation steps only; TLlib's warm-start GRL
counts its own calls (``auto_step: true``), which pre-training does not make. The schedule must be a
``LambdaLR`` (``inv``, ``constant``, ``dann``, ``poly``). The pre-training step forwards the source
alone, so it is the one step BSP writes itself (``training_step``); the adaptation step is the one-loss
path's with :meth:`BSP.transfer_loss`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR

from lightning_da.losses import dann_loss
from lightning_da.losses.spectral import batch_spectral_penalty
from lightning_da.methods.base import configured_lr
from lightning_da.methods.cdan import CDAN
from lightning_da.models.heads import DomainDiscriminator

ADVERSARIES = ("cdan", "dann")


def _phased(factor, pretrain_steps: int, pretrain_scale: float):
    """A schedule factor that runs ``factor`` from 0 over the pre-training steps (scaled by
    ``pretrain_scale``), then from 0 again."""
    return lambda i: pretrain_scale * factor(i) if i < pretrain_steps else factor(i - pretrain_steps)


class BSP(CDAN):
    def __init__(self, *args, bsp_weight: float = 1e-4, bsp_k: int = 1, adversary: str = "cdan",
                 pretrain_epochs: int = 0, pretrain_lr: float | None = None, discriminator: dict | None = None,
                 **kwargs):
        if adversary not in ADVERSARIES:
            raise ValueError(f"unknown BSP adversary {adversary!r}; choose one of {ADVERSARIES}")
        if adversary == "dann" and (kwargs.get("entropy_conditioning", True) or kwargs.get("randomized", False)):
            raise ValueError("BSP on DANN (adversary=dann) has no conditioning: set method.entropy_conditioning=false "
                             "and method.randomized=false")
        if pretrain_epochs < 0:
            raise ValueError(f"pretrain_epochs must be >= 0, got {pretrain_epochs}")
        if pretrain_lr is not None and not pretrain_epochs:
            raise ValueError("pretrain_lr is set but pretrain_epochs is 0: set both or neither")
        super().__init__(*args, discriminator=discriminator, **kwargs)
        if bsp_k < 1:
            raise ValueError(f"BSP's bsp_k (number of penalised singular values) must be >= 1, got {bsp_k}")
        self.bsp_weight, self.bsp_k, self.adversary = float(bsp_weight), int(bsp_k), adversary
        self.pretrain_epochs, self.pretrain_lr = int(pretrain_epochs), pretrain_lr
        if adversary == "dann":  # DANN's discriminator sees the features, not CDAN's multilinear map
            self.discriminator = DomainDiscriminator(self.bottleneck.out_features, **(discriminator or {}))

    # ------------------------------------------------------------------ phases
    def pretraining(self) -> bool:
        return self.current_epoch < self.pretrain_epochs

    def pretrain_steps(self) -> int:
        return self.pretrain_epochs * int(self.trainer.num_training_batches)

    def on_train_epoch_start(self) -> None:
        """At the first adaptation epoch, clear the optimiser state (TLlib's adaptation SGD is new)."""
        if self.pretrain_epochs and self.current_epoch == self.pretrain_epochs:
            for opt in self.trainer.optimizers:
                opt.state.clear()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        if self.pretrain_epochs:  # a GRL stepped from global_step counts adaptation steps only
            for m in self._stepped_grls:
                m.step = max(self.global_step - self.pretrain_steps(), 0)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if not self.pretraining():
            return super().training_step(batch, batch_idx)
        xs, ys = batch["source"]
        z = self.classify(self.features(xs))
        loss = F.cross_entropy(z, ys)
        if self.logging_step():
            self.log_train({"train/loss": loss, "train/loss_cls": loss,
                            "train/source_acc": (z.detach().argmax(1) == ys).float().mean()})
        return loss

    def make_scheduler(self, optimizer: torch.optim.Optimizer, group=None):
        scheduler = super().make_scheduler(optimizer, group)
        if not self.pretrain_epochs:
            return scheduler
        if not isinstance(scheduler, LambdaLR):
            raise ValueError(f"BSP's pre-training phase needs a LambdaLR schedule (inv, constant, dann, poly), "
                             f"got {type(scheduler).__name__}")
        lr = configured_lr(self.optimizer_factory)
        scale = 1.0 if self.pretrain_lr is None else self.pretrain_lr / lr
        # the number of batches per epoch is known once the trainer has set up its data
        steps = self.pretrain_epochs * int(self.trainer.estimated_stepping_batches) // max(int(self.trainer.max_epochs), 1)
        # the same factors, phased: a new LambdaLR takes its base lrs from the groups' initial_lr
        return LambdaLR(optimizer, [_phased(f, steps, scale) for f in scheduler.lr_lambdas])

    # ------------------------------------------------------------------ loss
    def transfer_loss(self, step):
        if self.adversary == "dann":
            coeff = self.grl.coeff  # before the GRL call, which may step a warm-start schedule
            d = self.discriminator(self.grl(step.features))
            loss, logs = dann_loss(d[:step.n_source], d[step.n_source:]), {"train/grl_coeff": coeff}
        else:
            loss, logs = super().transfer_loss(step)
        penalty = batch_spectral_penalty(step.source_features, step.target_features, self.bsp_k)
        return loss + self.bsp_weight * penalty, {**logs, "train/loss_bsp": penalty}
