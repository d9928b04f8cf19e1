"""The target accuracy of every training step, for the best-over-training (oracle) report of
full-batch methods such as SSAN, whose original code evaluates after every step."""

from __future__ import annotations

import lightning as L
import torch


class StepwiseTargetAccuracy(L.Callback):
    """Keeps the best unlabelled-target accuracy over training without a host sync per step.

    The training step returns ``target_logits`` of the whole evaluation set (the unlabelled target,
    forwarded for training anyway); their accuracy at step ``t`` is that of the weights after ``t``
    optimiser steps. The final weights are covered by the validation at the end of each epoch
    (``val/target_acc``). The labels come from the DataModule's ``eval_batch`` and are used for
    this report only: the result is an ORACLE (selection with target labels), as the SSAN paper's.
    """

    def __init__(self):
        self.best_acc: torch.Tensor | None = None
        self.best_updates: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not isinstance(outputs, dict) or "target_logits" not in outputs:
            return
        logits = outputs["target_logits"]
        if self._labels is None or self._labels.device != logits.device:
            self._labels = trainer.datamodule.eval_batch[1].to(logits.device)
        acc = (logits.argmax(1) == self._labels).float().mean()
        self._update(acc, trainer.global_step - 1)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        acc = trainer.callback_metrics.get("val/target_acc")
        if acc is not None and not trainer.sanity_checking:
            self._update(acc.detach().to(pl_module.device).float(), trainer.global_step)

    def _update(self, acc: torch.Tensor, updates: int) -> None:
        step = torch.full_like(acc, float(updates))
        if self.best_acc is None:
            self.best_acc, self.best_updates = acc.clone(), step
            return
        self.best_acc, self.best_updates = self.best_acc.to(acc.device), self.best_updates.to(acc.device)
        better = acc > self.best_acc
        self.best_acc = torch.where(better, acc, self.best_acc)
        self.best_updates = torch.where(better, step, self.best_updates)

    def result(self) -> dict | None:
        if self.best_acc is None:
            return None
        return {"note": "best unlabelled-target accuracy over all training steps: uses target labels",
                "step": int(self.best_updates), "val/target_acc": float(self.best_acc)}

    def state_dict(self) -> dict:
        return {"best_acc": None if self.best_acc is None else float(self.best_acc),
                "best_updates": None if self.best_updates is None else int(self.best_updates)}

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("best_acc") is not None:
            self.best_acc = torch.tensor(state_dict["best_acc"])
            self.best_updates = torch.tensor(float(state_dict["best_updates"]))
