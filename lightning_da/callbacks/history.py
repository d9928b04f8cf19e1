"""Keeps every validation epoch's metrics, so a run can report its oracle best afterwards."""

from __future__ import annotations

import lightning as L


class MetricHistory(L.Callback):
    """Records ``val/*`` metrics after each validation epoch (not the sanity check) as
    ``history = [{"epoch": e, "step": s, "val/target_acc": ...}, ...]``."""

    def __init__(self):
        self.history: list[dict] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        row.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        self.history.append(row)

    def best(self, metric: str, mode: str = "max") -> dict | None:
        rows = [r for r in self.history if metric in r]
        if not rows:
            return None
        return (max if mode == "max" else min)(rows, key=lambda r: r[metric])

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = list(state_dict.get("history", []))
