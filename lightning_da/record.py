"""What a checkpoint carries so that its model can be used without the run, and what loading it trusts.

Every checkpoint a run writes holds, under ``checkpoint["lightning_da"]`` (:class:`ModelRecord`),
plain data only (strings, numbers, lists, dicts, bytes and tensors), so that
``torch.load(weights_only=True)`` reads it:

* ``config``: the run's composed config as YAML (resolved, without the ``hydra`` node) and
  ``command``, the ``python run.py ...`` line that trained it;
* ``classes``: the class names in label order;
* ``input``: the target domain's evaluation preprocessing (:mod:`lightning_da.data.preprocess`), with
  ``shape`` (one preprocessed sample's shape) and ``fixed_size`` (the backbone takes that size only);
* ``backbone``: the backbone config as built (``in_features`` filled from the data), or None;
* ``model_kwargs``: what the method took from the data (HDA: the domains' feature widths, and the
  widths of domains given in row-space coordinates); ``input_bases``: those domains' bases ``Q``
  (``d x n`` tensors), with which loading gives the model back its full input width;
* ``assets``: files a part needs to be rebuilt offline (a text branch's tokenizer and model config);
* ``versions`` of the library, torch and lightning.

Loading (:func:`lightning_da.load.load_model`) rebuilds only from ``_target_``s in
:data:`ALLOWED_PACKAGES` (:func:`check_config`): the parts that are built (method, backbone, norm,
optimiser, schedule, input transforms, and the data for export's check) name this library, torch,
torchvision, timm, open_clip or transformers; the sections never built (trainer, callbacks,
loggers) may also name lightning.
Within those packages the loaders that fetch or run code (``torch.hub``, ``torch.load``,
``torch.jit``, ...) and ``trust_remote_code`` are refused. Anything else is refused by name before
anything is built; ``trust=[package, ...]`` lets a user add packages they trust (their own data code).
"""

from __future__ import annotations

import shlex
from typing import Any, Iterator, Sequence

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

RECORD_KEY = "lightning_da"
RECORD_FORMAT = 1
ALLOWED_PACKAGES = ("lightning_da", "torch", "torchvision", "timm", "open_clip", "transformers")
#: the training framework, named by the sections loading never builds (trainer, callbacks, loggers)
FRAMEWORK_PACKAGES = ("lightning",)
#: config sections that are built from a checkpoint (the data only by export's check on the run's own
#: data); the rest are kept for the record
BUILT_SECTIONS = ("method", "backbone", "norm", "optimizer", "scheduler", "data")
#: callables inside allowed packages that fetch or run code
DENIED_TARGETS = ("torch.hub", "torch.load", "torch.jit", "torch.package", "torch.utils.cpp_extension",
                  "torch.utils.model_zoo", "torch.compile", "torch.export.load", "lightning_da.load",
                  "lightning_da.predict", "lightning_da.export")


class UntrustedCheckpointError(ValueError):
    """A checkpoint that would run code when loaded (a pickled object, a target outside the allow-list)."""


# ---------------------------------------------------------------------------------------------- trust
def check_target(target: Any, where: str, allowed: Sequence[str] = ALLOWED_PACKAGES) -> str:
    """``target`` if it is a dotted name inside ``allowed`` and not a loader of code; else raise
    :class:`UntrustedCheckpointError` naming it (``where``: what names it)."""
    if not isinstance(target, str) or not target.replace(".", "").replace("_", "").isalnum():
        raise UntrustedCheckpointError(f"refused: {where} names the _target_ {target!r}, which is not a dotted name")
    if any(target == d or target.startswith(d + ".") for d in DENIED_TARGETS):
        raise UntrustedCheckpointError(f"refused: {where} names the _target_ {target!r}, which loads or runs code; "
                                       "lightning-da never builds it from a checkpoint")
    if target.split(".")[0] not in allowed:
        raise UntrustedCheckpointError(
            f"refused: {where} names the _target_ {target!r}, outside the allow-list ({', '.join(allowed)}); nothing "
            "was built. lightning-da rebuilds a model only from these packages; if you trust this checkpoint and "
            f"that package, pass trust=[{target.split('.')[0]!r}] (command line: --trust {target.split('.')[0]})")
    return target


def _walk(node: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield path, str(k), v
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def check_config(config: dict, trust: Sequence[str] = ()) -> None:
    """Refuse a stored config that names a ``_target_`` outside the allow-list (built sections:
    :data:`ALLOWED_PACKAGES`; the others also lightning), asks for ``trust_remote_code`` or holds an
    unresolved interpolation in a built section (a stored config is resolved)."""
    for path, key, value in _walk(config, ""):
        section = path.split(".")[0].split("[")[0] if path else key
        model_part = section in BUILT_SECTIONS
        where = f"the stored config at {path + '.' if path else ''}{key}"
        if key == "_target_":
            allowed = (*ALLOWED_PACKAGES, *trust) if model_part else (*ALLOWED_PACKAGES, *FRAMEWORK_PACKAGES, *trust)
            check_target(value, where, allowed)
        elif key == "trust_remote_code" and value:
            raise UntrustedCheckpointError(f"refused: {where} asks for trust_remote_code, which runs downloaded code")
        elif model_part and isinstance(value, str) and "${" in value:
            raise UntrustedCheckpointError(f"refused: {where} holds the interpolation {value!r}; a checkpoint's "
                                           "config is stored resolved")


# ---------------------------------------------------------------------------------------------- writing
def run_command(cfg: DictConfig) -> str:
    """``python run.py <the run's overrides>`` (Hydra's ``hydra.overrides.task``)."""
    overrides = cfg.get("hydra", {}).get("overrides", {}).get("task")
    if overrides is None:  # inside a Hydra app the job's config has no hydra node
        from hydra.core.hydra_config import HydraConfig

        overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    overrides = list(overrides or [])
    return " ".join(["python run.py", *(shlex.quote(o) for o in overrides)])


def plain_config(cfg: DictConfig) -> dict:
    """The composed config without its ``hydra`` node, resolved where it resolves."""
    node = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if isinstance(cfg, DictConfig) else cfg
    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=False)
    except Exception:  # noqa: BLE001 - an interpolation that cannot resolve outside Hydra: keep it as written
        return OmegaConf.to_container(node, resolve=False)


def target_domain(datamodule) -> Any:
    """The built target domain of a DataModule (:class:`DADataModule` or :class:`FullBatchDataModule`)."""
    if hasattr(datamodule, "target_domain"):
        return datamodule.target_domain
    return datamodule.domains[datamodule.target_name]


def input_record(datamodule, backbone: torch.nn.Module | None) -> dict | None:
    """The target domain's ``eval_input`` with the shape of one preprocessed sample (images) and
    whether the backbone takes that size only."""
    description = target_domain(datamodule).eval_input
    if not description:
        return None
    record = dict(description)
    if record["kind"] == "image":
        sample = datamodule.target_eval_set[0][0]
        record["shape"] = list(sample.shape)
        record["fixed_size"] = bool((getattr(backbone, "input_spec", None) or {}).get("fixed_size", False))
    return record


def backbone_assets(backbone: torch.nn.Module | None) -> dict[str, dict[str, bytes]]:
    """Files the backbone's text branches need to be rebuilt offline: ``{branch name: {file: bytes}}``."""
    from lightning_da.models.multimodal import TwoBranchNet

    if not isinstance(backbone, TwoBranchNet):
        return {}
    return {name: branch.encoder.model_files() for name, branch in (("branch_t", backbone.branch_t), ("branch_v", backbone.branch_v))
            if branch.kind == "transformers"}


def versions() -> dict[str, str]:
    import platform

    import lightning_da

    return {"lightning_da": str(lightning_da.__version__), "torch": str(torch.__version__), "lightning": str(L.__version__),
            "python": platform.python_version()}


def build_record(cfg: DictConfig, datamodule, backbone: torch.nn.Module | None, backbone_cfg: Any,
                 data_kwargs: dict) -> dict:
    """The plain-data record of a run (module docstring)."""
    kwargs = {k: v for k, v in data_kwargs.items() if k not in ("input_bases", "class_names")}
    bases = {d: b.detach().cpu().contiguous() for d, b in (data_kwargs.get("input_bases") or {}).items()}
    if bases:
        kwargs["input_bases"] = {d: int(b.shape[1]) for d, b in bases.items()}
    if backbone_cfg is not None and not isinstance(backbone_cfg, dict):
        backbone_cfg = OmegaConf.to_container(backbone_cfg, resolve=True)
    return {
        "format": RECORD_FORMAT,
        "config": OmegaConf.to_yaml(OmegaConf.create(plain_config(cfg))),
        "command": run_command(cfg),
        "classes": [str(c) for c in datamodule.classes],
        "input": input_record(datamodule, backbone),
        "backbone": backbone_cfg,
        "model_kwargs": kwargs,
        "input_bases": bases,
        "assets": backbone_assets(backbone),
        "versions": versions(),
    }


class ModelRecord(L.Callback):
    """Adds the run's record (module docstring) to every checkpoint it writes, built once from the
    composed config, the DataModule and the backbone as built."""

    def __init__(self, cfg: DictConfig, backbone: torch.nn.Module | None, backbone_cfg: Any, data_kwargs: dict):
        self.cfg, self.backbone, self.backbone_cfg, self.data_kwargs = cfg, backbone, backbone_cfg, data_kwargs
        self.record: dict | None = None

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self.record is None:
            self.record = build_record(self.cfg, trainer.datamodule, self.backbone, self.backbone_cfg, self.data_kwargs)
        checkpoint[RECORD_KEY] = self.record
