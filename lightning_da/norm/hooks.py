"""What the norm group does around training, as a Lightning callback the method returns from
``configure_callbacks`` (:func:`norm_callbacks`), so any method gets it with any trainer:

* RN (:class:`~lightning_da.norm.rn.ReciprocalNorm`): after every optimiser step (automatic or
  manual, before the scheduler steps) the gates are clamped to their range.
* AdaBN (``norm=adabn``): before each validation and test pass, and once fitting ends, the marked
  BatchNorm layers' statistics are re-estimated on the whole target train set (test-time transform;
  every rank the same data, so ranks agree), through the module's ``features``; so the checkpoints
  hold the target statistics the model is evaluated with.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import move_data_to_device
from torch import nn

from lightning_da.norm.adabn import adabn_layers, adapt_batchnorm
from lightning_da.norm.rn import ReciprocalNorm


@torch.no_grad()
def clamp_norm_gates(module: nn.Module) -> None:
    """Clamp the RN gates of every :class:`ReciprocalNorm` in ``module`` to their range (after a step)."""
    for m in module.modules():
        if isinstance(m, ReciprocalNorm):
            m.clamp_gates()


class NormHooks(L.Callback):
    """RN's gate clamp after each optimiser step and AdaBN's re-estimation before each evaluation."""

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not any(isinstance(m, ReciprocalNorm) for m in module.modules()):
            return
        for opt in trainer.optimizers:  # one hook per optimiser, registered once (resumed fits do not stack them)
            if not getattr(opt, "_da_gate_clamp_hook", False):
                opt.register_step_post_hook(lambda *_: clamp_norm_gates(module))
                opt._da_gate_clamp_hook = True

    def on_validation_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._adapt(trainer, module)

    def on_test_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._adapt(trainer, module)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # the fitted model keeps its target statistics (a checkpoint written now evaluates as the tests
        # do): estimated again unless nothing trained since the last validation's estimate
        if getattr(self, "_adapted_at_step", None) != trainer.global_step:
            self._adapt(trainer, module)

    def _adapt(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        layers = adabn_layers(module)
        if not layers or trainer.sanity_checking:
            return
        loader = trainer.datamodule.target_pass_loader(eval_transform=True)
        batches = (move_data_to_device(x, module.device) for x, _ in loader)
        adapt_batchnorm(module, module.features, batches, layers)
        self._adapted_at_step = trainer.global_step


def norm_callbacks(module: nn.Module) -> list[L.Callback]:
    """``[NormHooks()]`` when ``module`` has RN or AdaBN layers, else nothing."""
    has = any(isinstance(m, ReciprocalNorm) for m in module.modules()) or adabn_layers(module)
    return [NormHooks()] if has else []
