"""A progress line every N steps, for runs without a progress bar (full-batch HDA runs, grids)."""

from __future__ import annotations

import logging
import time

import lightning as L

from lightning_da.compat import batches_that_stepped

log = logging.getLogger(__name__)


class ProgressLine(L.Callback):
    """Logs ``step i/N (p%), loss, elapsed, eta`` every ``every`` training batches (0: a tenth of the run)."""

    def __init__(self, every: int = 0):
        self.every = every
        self._start = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.time()
        total = trainer.estimated_stepping_batches
        self._total = int(total) if total != float("inf") else None
        self._every = self.every or max(1, (self._total or 1000) // 10)
        self._done = self._first = batches_that_stepped(trainer)  # > 0 when resumed

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._done += 1
        done = self._done
        if done % self._every and done != self._total:
            return
        loss = trainer.callback_metrics.get("train/loss")
        elapsed = time.time() - self._start
        total = f"/{self._total} ({100 * done / self._total:.0f}%)" if self._total else ""
        ran = done - self._first
        eta = f", eta {elapsed / ran * (self._total - done):.0f} s" if self._total and 0 < ran and done < self._total else ""
        log.info("step %d%s%s, %.0f s%s", done, total, f", train/loss {float(loss):.4f}" if loss is not None else "",
                 elapsed, eta)
