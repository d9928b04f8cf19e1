"""Whole-step test harness: run one training batch of a method through a real Lightning Trainer and
read back what it logged, so that a test can replay the same step in plain torch on deep copies of
the modules and compare every logged term and every entry of the state_dict.

Typical use (see the whole-step tests in tests/methods/)::

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

Below the harness, the plain-torch pieces that several replays share, once each: the gradient
reversal and the entropies, the replays' SGD and ``inv`` schedule, the two-domain batch, and two
independent references the loss tests share. The replays of a method family that two test files
share are submodules: :mod:`step_replay.one_loss` (DAN, JAN, Deep CORAL, MCC, BNM),
:mod:`step_replay.bi_classifier` (MCD, CGDM), :mod:`step_replay.clip` (CMKD, zero-shot CLIP) and
:mod:`step_replay.hda` (SSAN, HDANet, TargetOnly).
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from lightning_da.optim import inv_schedule


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


# ---------------------------------------------------------------------------- plain-torch pieces
def reversed_grad(x: torch.Tensor, coeff: float) -> torch.Tensor:
    """Identity forward, gradient times -coeff backward."""
    return (1 + coeff) * x.detach() - coeff * x


def row_entropy(z: torch.Tensor) -> torch.Tensor:
    """The entropy of each row's softmax, with the originals' eps (1e-5) inside the log."""
    p = z.softmax(1)
    return -(p * torch.log(p + 1e-5)).sum(1)


def mean_entropy(z: torch.Tensor) -> torch.Tensor:
    """:func:`row_entropy` averaged over the rows (the ``entropy`` extra loss)."""
    return row_entropy(z).mean()


def mcc(z: torch.Tensor, t: float = 2.5) -> torch.Tensor:
    """Minimum class confusion as the original MCC code (column normalisation by broadcasting)."""
    b, c = z.shape
    p = (z / t).softmax(1)
    w = 1 + torch.exp(-(-(p * torch.log(p + 1e-5)).sum(1))).detach()
    w = b * w / w.sum()
    cov = (p * w[:, None]).t() @ p
    cov = cov / cov.sum(1)
    return (cov.sum() - cov.trace()) / c


def forward(ref, x):
    """Features and logits of a one-head method: ``bottleneck(backbone(x))`` and its classifier."""
    f = ref.bottleneck(ref.backbone(x))
    return f, ref.classifier(f)


# ---------------------------------------------------------------------------- the replays' optimiser
LR, MOMENTUM, WD = 0.1, 0.9, 1e-3
GAMMA, POWER = 0.5, 0.75                   # inv schedule: lr_i = lr_0 (1 + gamma i)^-power
BOTTLENECK = {"dim": 5, "batch_norm": True, "relu": True, "dropout": 0.0}
DISCRIMINATOR = {"hidden": 4, "num_hidden": 1, "batch_norm": True, "dropout": 0.0}


def sgd():
    """The method's optimiser as Hydra builds it: SGD with momentum and weight decay, as a partial."""
    return partial(torch.optim.SGD, lr=LR, momentum=MOMENTUM, weight_decay=WD)


def scheduler():
    """The method's ``inv`` schedule, as a partial."""
    return partial(inv_schedule, gamma=GAMMA, power=POWER)


def replay_sgd(groups, lr):
    """The replay's SGD (momentum, weight decay) over explicit parameter groups."""
    return torch.optim.SGD(groups, lr=lr, momentum=MOMENTUM, weight_decay=WD)


def inv(opt):
    """The ``inv`` schedule on the replay's optimiser."""
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (1 + GAMMA * i) ** -POWER)


def sgd_step(ref, loss, lr_mult: dict[str, float], names: list[str], schedule=None):
    """One SGD step (momentum, weight decay, per-module lr) on the modules ``names`` of ``ref``; with
    ``schedule`` (e.g. :func:`inv`) the schedule's first step after it. Returns the optimiser."""
    groups = [{"params": list(getattr(ref, n).parameters()), "lr": LR * lr_mult.get(n, 1.0)} for n in names]
    opt = torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, weight_decay=WD)
    sched = schedule(opt) if schedule is not None else None
    opt.zero_grad()
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()
    return opt


def replay_step(ref, loss, lr_mult: dict[str, float], names: list[str]):
    """SGD (momentum, weight decay, per-module lr) on ``ref`` and the inv schedule's first step."""
    return sgd_step(ref, loss, lr_mult, names, schedule=inv)


def assert_same_optimizer(model, ref_opt) -> None:
    """The method's (only) optimiser has the replay's groups, lrs after the schedule step, and
    momentum buffers (i.e. the same first-step gradients plus weight decay)."""
    opts = model.trainer.optimizers
    assert len(opts) == 1, f"expected one optimiser, got {len(opts)}"
    got = opts[0]
    assert len(got.param_groups) == len(ref_opt.param_groups)
    for i, (ga, gb) in enumerate(zip(got.param_groups, ref_opt.param_groups)):
        assert len(ga["params"]) == len(gb["params"]), f"group {i}: {len(ga['params'])} vs {len(gb['params'])} params"
        assert ga["lr"] == pytest.approx(gb["lr"], rel=1e-12), f"group {i} lr: {ga['lr']} vs {gb['lr']}"
        assert ga["momentum"] == MOMENTUM and ga["weight_decay"] == WD
        for pa, pb in zip(ga["params"], gb["params"]):
            assert pa.shape == pb.shape
            torch.testing.assert_close(got.state[pa]["momentum_buffer"], ref_opt.state[pb]["momentum_buffer"],
                                       rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- the two-domain batch
NS, NT = 5, 7
SOURCE_LABELS = torch.tensor([0, 1, 2, 1, 0])


def make_batch(seed: int = 0):
    """5 source rows and 7 target rows (6-d), and the generator for further draws."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(NS, 6, generator=g)
    xt = torch.randn(NT, 6, generator=g) * 1.5 + 0.5  # different size and contents
    return xs, xt, g


def xs_ys_xt(seed: int = 0):
    xs, xt, _ = make_batch(seed)
    return xs, torch.tensor([0, 1, 2, 1, 0]), xt


def batch(seed: int = 0):
    """The batch of :func:`make_batch` as a method reads it: ``{"source": (x, y), "target": (x, idx)}``."""
    xs, ys, xt = xs_ys_xt(seed)
    return {"source": (xs, ys), "target": (xt, torch.arange(NT))}


def views(seed=1):
    """A weak and a strong view of 7 target rows."""
    g = torch.Generator().manual_seed(seed)
    x_weak = torch.randn(7, 6, generator=g) * 1.5 + 0.5
    return x_weak, x_weak + 0.3 * torch.randn(7, 6, generator=g)


def source_acc(z, ys):
    return (z[:NS].argmax(1) == ys).float().mean()


# ---------------------------------------------------------------------------- references of the loss tests
def softmax_np(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def grads(loss, tensors):
    return torch.autograd.grad(loss, tensors, retain_graph=True)
