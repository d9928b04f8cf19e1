"""Unsupervised validators: scores that pick checkpoints and hyper-parameters without target labels.

Each :class:`Validator` declares the data it needs (keys of the evaluation pass below) and returns one
number, higher is better (formulas in :mod:`lightning_da.validators.scores`):

==============  ===========================================================================================
``entropy``     target logits
``im``          target logits
``snd``         target logits
``bnm``         target logits
``class_ami``   target features and logits
``dev``         source-train features, target features, held-out source features / logits / labels
``source_acc``  held-out source logits and labels
==============  ===========================================================================================

:class:`ValidatorScores` (a callback, ``callbacks.validators``) computes them after every validation
epoch on a fixed random subset of the target training set (evaluation transform; at most
``max_samples`` rows), the held-out source split and a subset of the source training split, gathered
across processes under DDP, and logs ``val/validator/<name>``: any of them can be ``monitor`` (best
checkpoint) or a sweep's objective (``optimized_metric``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import lightning as L
import torch
from torch.utils.data import DataLoader, Subset

from lightning_da.eval_pass import eval_mode, predict_dataset
from lightning_da.validators.scores import (bnm_score, class_ami_score, dev_score, entropy_score, im_score, snd_score,
                                            source_accuracy)

log = logging.getLogger(__name__)

TARGET_LOGITS, TARGET_FEATURES = "target_logits", "target_features"
SOURCE_TRAIN_FEATURES = "source_train_features"
SOURCE_VAL_FEATURES, SOURCE_VAL_LOGITS, SOURCE_VAL_LABELS = "source_val_features", "source_val_logits", "source_val_labels"


@dataclass(frozen=True)
class Validator:
    name: str
    needs: tuple[str, ...]
    score: Callable[..., float]

    def __call__(self, data: dict) -> float:
        return self.score(*(data[k] for k in self.needs))


VALIDATORS = {v.name: v for v in [
    Validator("entropy", (TARGET_LOGITS,), entropy_score),
    Validator("im", (TARGET_LOGITS,), im_score),
    Validator("snd", (TARGET_LOGITS,), snd_score),
    Validator("bnm", (TARGET_LOGITS,), bnm_score),
    Validator("class_ami", (TARGET_FEATURES, TARGET_LOGITS), class_ami_score),
    Validator("dev", (SOURCE_TRAIN_FEATURES, TARGET_FEATURES, SOURCE_VAL_FEATURES, SOURCE_VAL_LOGITS, SOURCE_VAL_LABELS), dev_score),
    Validator("source_acc", (SOURCE_VAL_LOGITS, SOURCE_VAL_LABELS), source_accuracy),
]}


def predict_subset(module: L.LightningModule, dataset, indices, batch_size: int, num_workers: int = 0) -> dict[str, torch.Tensor]:
    """Features, logits (``module.predict_features``) and labels of ``dataset[indices]``, on the
    module's device (inputs may be tensors or dicts of them); the caller chooses the mode."""
    loader = DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, num_workers=num_workers)
    f, z, y = predict_dataset(module.predict_features, loader, module.device, indexed=True)  # indexed: the labels
    return {"features": f.float(), "logits": z.float(), "labels": y}


def _gather_rows(module: L.LightningModule, rows: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's ``rows`` (different lengths allowed), in rank order."""
    if module.trainer.world_size == 1:
        return rows
    counts = module.all_gather(torch.tensor(len(rows), device=module.device)).tolist()
    padded = torch.zeros((max(counts), *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    padded[:len(rows)] = rows
    gathered = module.all_gather(padded)
    return torch.cat([gathered[r, :c] for r, c in enumerate(counts)])


class ValidatorScores(L.Callback):
    """Log ``val/validator/<name>`` for each of ``names`` after every validation epoch."""

    def __init__(self, names: Sequence[str] = tuple(VALIDATORS), max_samples: int = 2000, seed: int = 0):
        unknown = sorted(set(names) - set(VALIDATORS))
        if unknown:
            raise ValueError(f"unknown validators {unknown}; available: {sorted(VALIDATORS)}")
        self.validators = [VALIDATORS[n] for n in names]
        self.max_samples, self.seed = max_samples, seed
        self._warned: set[str] = set()

    def _subset(self, n: int, salt: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + salt)
        return torch.randperm(n, generator=g)[:self.max_samples].sort().values

    @torch.no_grad()
    def _pass(self, trainer, module, dataset, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features, logits and labels of ``dataset[indices]`` (each process a share), gathered and
        put back in index order."""
        shard = indices[trainer.global_rank::trainer.world_size]
        dm = trainer.datamodule
        out = {**predict_subset(module, dataset, shard.tolist(), dm.eval_batch_size, dm.num_workers),
               "index": shard.to(module.device)}
        out = {k: _gather_rows(module, v) for k, v in out.items()}
        order = out.pop("index").argsort()
        return {k: v[order].cpu() for k, v in out.items()}

    def _skip(self, name: str, why: str) -> None:
        if name not in self._warned:
            log.warning("validator %s is skipped: %s", name, why)
            self._warned.add(name)

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self.validators:
            return
        dm = trainer.datamodule
        if not hasattr(dm, "source_splits") or not hasattr(module, "predict_features"):
            for v in self.validators:
                self._skip(v.name, f"{type(dm).__name__} / {type(module).__name__} has no evaluation pass for validators")
            return
        needs = {k for v in self.validators for k in v.needs}
        source_train, source_val = dm.source_splits[0]
        data: dict[str, torch.Tensor] = {}
        with eval_mode(module):
            if needs & {TARGET_LOGITS, TARGET_FEATURES}:
                target = dm.domains[dm.target_name].train_eval
                t = self._pass(trainer, module, target, self._subset(len(target), 0))
                data.update({TARGET_LOGITS: t["logits"], TARGET_FEATURES: t["features"]})
            if needs & {SOURCE_VAL_FEATURES, SOURCE_VAL_LOGITS, SOURCE_VAL_LABELS} and source_val is not None:
                s = self._pass(trainer, module, source_val, self._subset(len(source_val), 1))
                data.update({SOURCE_VAL_FEATURES: s["features"], SOURCE_VAL_LOGITS: s["logits"],
                             SOURCE_VAL_LABELS: s["labels"]})
            if SOURCE_TRAIN_FEATURES in needs:
                data[SOURCE_TRAIN_FEATURES] = self._pass(trainer, module, source_train,
                                                         self._subset(len(source_train), 2))["features"]
        for v in self.validators:
            missing = [k for k in v.needs if k not in data]
            if missing:
                self._skip(v.name, f"needs {missing}: hold out source data with data.source_holdout=0.1")
                continue
            module.log(f"val/validator/{v.name}", v(data))


__all__ = ["VALIDATORS", "Validator", "ValidatorScores", "predict_subset"]
