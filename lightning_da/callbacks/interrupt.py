"""What a Ctrl-C leaves behind: a checkpoint of the weights and loop state at the interrupted step,
and the exact command that resumes from it."""

from __future__ import annotations

import logging
import os
import shlex
import sys

import lightning as L

log = logging.getLogger(__name__)


class InterruptCheckpoint(L.Callback):
    """On ``KeyboardInterrupt`` during fitting, save ``<ckpt_dir>/interrupted.ckpt`` (also in epoch 0,
    before any epoch-end ``last.ckpt`` exists) and say what was saved and how to resume:
    ``python run.py <the run's overrides> ckpt_path=<that file>``. ``overrides`` are the run's
    command-line overrides (Hydra's ``hydra.overrides.task``)."""

    def __init__(self, ckpt_dir: str, overrides: list[str] | None = None, run_dir: str | None = None):
        self.ckpt_dir = ckpt_dir
        self.overrides = [o for o in (overrides or []) if not o.startswith("ckpt_path=")]
        if run_dir and not any(o.startswith("hydra.run.dir=") for o in self.overrides):
            self.overrides.append(f"hydra.run.dir={run_dir}")  # resume into the same run folder
        self.message: str | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, KeyboardInterrupt) or not trainer.is_global_zero:
            return
        path = os.path.join(self.ckpt_dir, "interrupted.ckpt")
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        try:
            os.makedirs(self.ckpt_dir, exist_ok=True)
            trainer.save_checkpoint(path)
        except Exception as err:  # noqa: BLE001 - say what could not be saved instead of hiding the interrupt
            last = os.path.join(self.ckpt_dir, "last.ckpt")
            saved = f"last.ckpt of the last finished epoch ({last})" if os.path.exists(last) else "nothing (no epoch finished)"
            self.message = f"interrupted at {where}; saving the interrupted state failed ({err}); saved: {saved}"
            log.warning(self.message)
            print(self.message, file=sys.stderr)
            return
        command = " ".join(["python run.py", *map(shlex.quote, self.overrides), shlex.quote(f"ckpt_path={path}")])
        self.message = (f"interrupted at {where}: saved the weights, optimiser and loop state to {path}\n"
                        f"resume with: {command}")
        log.warning(self.message)
        print(self.message, file=sys.stderr)
