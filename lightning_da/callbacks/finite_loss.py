"""Stop a run whose training loss became NaN or Inf, instead of finishing it and reporting a number.

``lightning_da.train.build`` adds :class:`FiniteLossCheck` to every run, so it covers every method:
one-loss methods (automatic optimisation) and multi-step ones (manual optimisation, several losses
per batch) alike, because it watches every loss that is back-propagated (Lightning's
``on_before_backward`` hook, which ``manual_backward`` calls too).

No host sync in the training step: each backward only updates a flag kept on the loss's device (the
first step with a non-finite loss; three small tensor ops). The flag is read where the host waits
anyway: on the steps whose scalars are logged (every ``trainer.log_every_n_steps``), before each
validation and at the end of training. The logged ``train/loss`` of those steps is remembered as
the last finite loss, for the error message.
"""

from __future__ import annotations

import logging

import lightning as L
import torch

from lightning_da.compat import batches_that_stepped

log = logging.getLogger(__name__)
_NONE = 2**62  # "no non-finite loss seen": larger than any step


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or Inf: the run is stopped, its weights are no longer meaningful."""


class FiniteLossCheck(L.Callback):
    """Raise :class:`NonFiniteLossError` once a back-propagated loss is NaN or Inf, naming the step
    at which it was seen, the last finite ``train/loss`` and its step, and what to check (see the
    module docstring for when the check runs)."""

    def __init__(self):
        self._first: torch.Tensor | None = None  # device scalar: the first step (1-based) with a non-finite loss
        self.last_finite: tuple[int, float] | None = None  # (step, logged train/loss)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._first, self.last_finite = None, None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        step = batches_that_stepped(trainer) + 1  # this batch, counted from 1
        seen = torch.where(torch.isfinite(loss.detach()), _NONE, step)
        self._first = seen if self._first is None else torch.minimum(self._first, seen)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        step = batches_that_stepped(trainer) + 1
        if step % max(trainer.log_every_n_steps, 1) == 0:  # the steps whose scalars are logged (DAMethod.logging_step)
            self.check(trainer)
            loss = trainer.callback_metrics.get("train/loss")
            if loss is not None and bool(torch.isfinite(loss)):
                self.last_finite = (step, float(loss))

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self.check(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.check(trainer)

    def first_non_finite(self, trainer: L.Trainer) -> int | None:
        """The first step with a non-finite loss on any process (None: none so far); one host read."""
        if self._first is None:
            return None
        first = self._first
        if trainer.world_size > 1:  # every process reads the same flag, so all of them stop together
            first = trainer.strategy.reduce(first.clone(), reduce_op=torch.distributed.ReduceOp.MIN)
        first = int(first)
        return None if first >= _NONE else first

    def check(self, trainer: L.Trainer) -> None:
        first = self.first_non_finite(trainer)
        if first is not None:
            raise NonFiniteLossError(self.message(trainer, first))

    def message(self, trainer: L.Trainer, first: int) -> str:
        if self.last_finite is not None:
            last = f"the last finite train/loss was {self.last_finite[1]:.4g} at step {self.last_finite[0]}"
        else:
            last = (f"no train/loss was logged before it (it is logged every {trainer.log_every_n_steps} steps, "
                    "trainer.log_every_n_steps)")
        lrs = sorted({g["lr"] for opt in trainer.optimizers for g in opt.param_groups})
        lr = ", ".join(f"{v:.3g}" for v in lrs[:4]) or "n/a"
        return (f"training stopped: the loss became non-finite (NaN or Inf) at step {first}; {last}. The weights are no longer "
                f"meaningful, so no result is reported. Check: (1) the input data for NaN or Inf values and extreme "
                f"magnitudes; (2) the learning rate, which may be too high (current lr {lr}; try optimizer.lr 10x "
                f"lower); (3) mixed precision (trainer.precision={trainer.precision}; 16-mixed can overflow: try "
                f"bf16-mixed or 32)")
