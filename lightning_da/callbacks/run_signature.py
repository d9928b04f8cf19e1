"""What a checkpoint was made with, so that resuming it under other settings is an error that says
which settings differ, instead of raw ``size mismatch`` / ``Unexpected key(s)`` state-dict errors.

:class:`RunSignature` writes the settings that decide the model's shape (method, backbone, norm,
number of classes and input widths) into every checkpoint; :func:`check_resume` compares them with
the run about to resume (``ckpt_path=...``) before fitting starts; :func:`resume_error` explains a
state-dict error of a checkpoint saved without them (or differing in another option) and lists the
overrides of the run that made it when its run folder is still there.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch

KEY = "lightning_da_run"


class ResumeMismatchError(ValueError):
    """``ckpt_path`` was saved by a run with other settings than the one resuming it."""


def run_signature(cfg, model: L.LightningModule, datamodule) -> dict[str, Any]:
    """The settings of this run that a resumed checkpoint must share."""
    backbone = cfg.get("backbone") or {}
    return {"method": type(model).__name__,
            "backbone": backbone.get("name") if model.needs.backbone else None,
            "norm": (cfg.get("norm") or {}).get("kind"),
            "num_classes": int(model.num_classes),
            "input_widths": list((getattr(datamodule, "input_dims", None) or {}).values()) or None}


class RunSignature(L.Callback):
    """Store ``signature`` (:func:`run_signature`) in every checkpoint under ``lightning_da_run``."""

    def __init__(self, signature: dict[str, Any]):
        self.signature = dict(signature)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint[KEY] = dict(self.signature)


def original_overrides(ckpt_path: str | os.PathLike) -> list[str] | None:
    """The command-line overrides of the run that wrote ``<run>/checkpoints/<file>`` (Hydra's
    ``<run>/.hydra/overrides.yaml``), or None when that folder is gone."""
    path = Path(ckpt_path).absolute().parent.parent / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    import yaml

    return [o for o in (yaml.safe_load(path.read_text()) or []) if not str(o).startswith(("ckpt_path=", "hydra."))]


def _how_to(ckpt_path) -> str:
    overrides = original_overrides(ckpt_path)
    made = f" (that run's overrides: {' '.join(overrides)})" if overrides else ""
    return (f"a checkpoint resumes only the run that made it: resume with that run's settings{made}, or drop ckpt_path "
            "to start a new run")


def check_resume(ckpt_path: str | os.PathLike, signature: dict[str, Any]) -> None:
    """Raise :class:`ResumeMismatchError` naming each setting in which ``ckpt_path`` differs from
    ``signature`` (checkpoints saved without a signature pass; :func:`resume_error` covers them)."""
    if not os.path.isfile(ckpt_path):
        return  # Lightning says that the file does not exist
    saved = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True).get(KEY)
    if not saved:
        return
    differ = [f"{k}: {saved.get(k)} in the checkpoint, {v} in this run" for k, v in signature.items() if saved.get(k) != v]
    if differ:
        raise ResumeMismatchError(f"ckpt_path={ckpt_path} was saved by a {saved.get('method')} run and cannot resume this "
                                  f"{signature['method']} run; they differ in {'; '.join(differ)}. {_how_to(ckpt_path)}")


def resume_error(err: Exception, ckpt_path: str | os.PathLike, signature: dict[str, Any]) -> Exception | None:
    """A :class:`ResumeMismatchError` explaining ``err`` when it is a state-dict or optimiser-state
    error of resuming ``ckpt_path`` (None for any other error)."""
    text = str(err)
    if not any(s in text for s in ("loading state_dict", "size mismatch", "Unexpected key", "Missing key",
                                   "parameter group that doesn't match")):
        return None
    first = text.strip().splitlines()[0][:300]
    return ResumeMismatchError(f"ckpt_path={ckpt_path} does not fit this {signature['method']} run (backbone "
                               f"{signature['backbone']}, norm {signature['norm']}, {signature['num_classes']} classes): "
                               f"its weights have other shapes or names ({first}). {_how_to(ckpt_path)}")
