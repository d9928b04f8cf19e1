"""Whole-step test harness: run one training batch of a method through a real Lightning Trainer and
read back what it logged, so that a test can replay the same step in plain torch on deep copies of
the modules and compare every logged term and every entry of the state_dict.

Typical use (see tests/test_step_*.py)::

    model = DANN(TinyBackbone(), 3, partial(torch.optim.SGD, lr=0.1, momentum=0.9), ...)
    ref = copy.deepcopy(model)                         # the replay's copy, taken before the step
    logged = run_one_batch(model, batch)               # one batch through Trainer.fit
    ... recompute the step on ref with plain torch ...
    assert_close_logs(logged, {"train/loss_cls": ..., ...})
    assert_same_state(model, ref)

``run_one_batch`` uses ``log_every_n_steps=1`` so that every training scalar is logged, no
validation, no checkpointing and no logger. The DataModule stand-in :class:`OneBatchData` yields
the given batch once per epoch and offers what methods read from a DataModule (the target train
set's length, a target pass loader, source names, the target pool); pass ``target_pass`` (a list
of ``(x, idx)`` batches) for methods that predict the whole target train set (CGDM's pseudo
labels, M2CAN's UACR).
"""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
from torch import nn


class TinyBackbone(nn.Sequential):
    """``Linear(d_in, width) -> BatchNorm1d -> ReLU``: a backbone with BatchNorm (so running
    statistics are part of the compared state) and ``out_features``."""

    def __init__(self, d_in: int = 6, width: int = 8):
        super().__init__(nn.Linear(d_in, width), nn.BatchNorm1d(width), nn.ReLU())
        self.out_features = width


class _TargetSet(torch.utils.data.Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


class _Batches:
    """An iterable of fixed batches with a length (a plain list would be read as several loaders)."""

    def __init__(self, batches: list):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class OneBatchData(L.LightningDataModule):
    """Yields ``batch`` once per epoch (``repeat`` times with ``repeat > 1``)."""

    def __init__(self, batch: dict, target_pass: list | None = None, n_target: int | None = None,
                 source_names: list[str] | None = None, repeat: int = 1, eval_batch=None):
        super().__init__()
        self.batch, self.target_pass, self.repeat = batch, target_pass, repeat
        if n_target is None:
            n_target = sum(len(idx) for _, idx in target_pass) if target_pass else 0
        self.target_train = _TargetSet(n_target)
        self.source_names = source_names or ["source"]
        self.multi_source = len(self.source_names) > 1
        self.combine_sources = False
        self.eval_names = ["target"]
        self.eval_batch = eval_batch
        self.pool = None

    def train_dataloader(self):
        return _Batches([self.batch] * self.repeat)

    def target_pass_loader(self, eval_transform: bool = True, batch_size: int | None = None):
        if self.target_pass is None:
            raise AssertionError("this method predicts the target train set: give OneBatchData a target_pass")
        return list(self.target_pass)

    def set_target_pool(self, indices) -> None:
        self.pool = indices


class _Recorder(L.Callback):
    def __init__(self):
        self.logged: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.logged.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def run_one_batch(model: L.LightningModule, batch: dict | None = None, data: L.LightningDataModule | None = None,
                  max_epochs: int = 1, **trainer_kwargs: Any) -> dict[str, float]:
    """Fit ``model`` on one batch (per epoch) on the CPU; returns the scalars logged at the last batch."""
    logged, _ = run_batches(model, batch, data, max_epochs, **trainer_kwargs)
    return logged[-1] if logged else {}


def assert_close_logs(logged: dict[str, float], expected: dict[str, float | torch.Tensor], rtol: float = 1e-5,
                      atol: float = 1e-6) -> None:
    """Every expected term was logged, with the expected value."""
    missing = sorted(set(expected) - set(logged))
    assert not missing, f"not logged: {missing}; logged: {sorted(logged)}"
    for k, v in expected.items():
        v = float(v)
        assert abs(logged[k] - v) <= atol + rtol * abs(v), f"{k}: logged {logged[k]!r}, replay {v!r}"


def assert_same_state(model: nn.Module, ref: nn.Module, rtol: float = 1e-5, atol: float = 1e-6,
                      ignore: tuple[str, ...] = ()) -> None:
    """The state_dicts agree entry by entry (parameters and buffers: BN running statistics too)."""
    got, want = model.state_dict(), ref.state_dict()
    keys = [k for k in want if not any(k.startswith(i) for i in ignore)]
    assert set(keys) <= set(got), f"missing in the trained model: {sorted(set(keys) - set(got))}"
    for k in keys:
        a, b = got[k], want[k]
        if not isinstance(b, torch.Tensor):  # extra state (e.g. a GRL's step counter)
            assert a == b, f"{k}: {a} vs {b}"
            continue
        if not torch.is_floating_point(b):
            assert torch.equal(a, b), f"{k}: {a} vs {b}"
            continue
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


def changed_any(model: nn.Module, before: nn.Module, prefix: str) -> bool:
    """Whether any parameter under ``prefix`` differs between two copies (to check a test moves them)."""
    a, b = dict(model.named_parameters()), dict(before.named_parameters())
    return any(not torch.equal(a[k], b[k]) for k in a if k.startswith(prefix))


def deep_copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module)


def run_batches(model: L.LightningModule, batch: dict | None = None, data: L.LightningDataModule | None = None,
                max_epochs: int = 1, **trainer_kwargs: Any) -> tuple[list[dict[str, float]], dict[str, float]]:
    """As :func:`run_one_batch`, but returns the scalars logged at *every* batch (a list, in order) and
    the trainer's metrics once fitting has ended (epoch-end logs such as ``train/dsp_millions`` too)."""
    data = data or OneBatchData(batch)
    recorder = _Recorder()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=max_epochs, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[recorder], **trainer_kwargs)
    trainer.fit(model, datamodule=data)
    return recorder.logged, {k: float(v) for k, v in trainer.callback_metrics.items()}
