"""Load an adapted model for use: ``lightning_da.load_model(run folder or checkpoint)``.

A checkpoint is untrusted input. It is read with ``torch.load(weights_only=True)``, so a pickled
object in it is refused, never run; the model is rebuilt from the plain-data record the run put in
it (:mod:`lightning_da.record`: the composed config, the class names, the evaluation preprocessing)
through the allow-listed ``_target_``s only, with every pretrained-weight source switched off (the
checkpoint holds the weights) and Hugging Face offline, so nothing is downloaded. Neither Hydra's
app, the run folder nor the training data is needed: a checkpoint copied alone loads.

The model comes back in evaluation mode on the device asked for. Norm layers evaluate as in the
run's tests (domain-aware norms with their target statistics, AdaBN with the target statistics
re-estimated when fitting ended). An HDA model applies its target domain's projector, taking raw
target feature rows (a model trained in row-space coordinates gets its full-width first layer back).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from lightning_da.data.preprocess import InputError, ModelInput, build_input
from lightning_da.record import RECORD_FORMAT, RECORD_KEY, UntrustedCheckpointError, check_config, check_target

CHECKPOINTS = ("last", "best")
#: the files a text branch's tokenizer and config consist of (no code)
ASSET_SUFFIXES = (".json", ".txt", ".model")


class CheckpointError(ValueError):
    """No usable checkpoint: a run folder without one, a file that is not a lightning-da checkpoint."""


# ---------------------------------------------------------------------------------------------- finding and reading
def find_checkpoint(path: str | os.PathLike, checkpoint: str = "last") -> Path:
    """The checkpoint file of ``path``: the file itself, or in a run folder ``checkpoints/final.ckpt``
    (the weights after the last step, what the run's ``last`` numbers test; else ``last.ckpt``) for
    ``last``, and the best-by-monitor checkpoint for ``best``."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, not {checkpoint!r}")
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if not p.exists():
        raise FileNotFoundError(f"{p} does not exist: give a run folder (with checkpoints/) or a .ckpt file")
    folder = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    if checkpoint == "last":
        found = [f for f in (folder / "final.ckpt", folder / "last.ckpt") if f.is_file()]
    else:
        found = sorted(folder.glob("best*.ckpt"))
        results = p / "results.json"
        if results.is_file():  # the run's own choice (the folder may have moved: look it up by name)
            named = (json.loads(results.read_text()).get("best") or {}).get("checkpoint")
            found = [f for f in found if named and f.name == Path(named).name] or found
        if len(found) > 1:
            raise CheckpointError(f"{folder} holds several best checkpoints {[f.name for f in found]}: give the file")
    if not found:
        present = sorted(f.name for f in folder.glob("*.ckpt"))
        wanted = "checkpoints/final.ckpt or checkpoints/last.ckpt" if checkpoint == "last" else "checkpoints/best-*.ckpt"
        raise CheckpointError(
            f"{p} has no {checkpoint} checkpoint: expected {wanted}"
            + (f" (it holds {present})" if present else " (it holds no .ckpt file)")
            + (". A best checkpoint exists only when the run had a monitor" if checkpoint == "best" else
               ". A run writes them when it trains; an evaluation-only run (e.g. zero-shot CLIP) writes none"))
    return found[0]


def read_checkpoint(file: str | os.PathLike) -> dict:
    """The checkpoint at ``file`` read with ``torch.load(weights_only=True)`` on the CPU: a file with
    pickled objects beyond tensors and plain data is refused (:class:`UntrustedCheckpointError`)
    before any of it runs; a file that is no PyTorch checkpoint is a :class:`CheckpointError`."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        named = re.search(r"GLOBAL ([\w.]+)", str(err))
        if named:  # a pickled callable: what a code payload needs
            raise UntrustedCheckpointError(
                f"refused: {file} holds pickled Python objects beyond tensors and plain data (it names "
                f"{named.group(1)}), which loading would run. lightning-da reads checkpoints with "
                "torch.load(weights_only=True) and runs no code from them") from None
        detail = next((line.strip() for line in str(err).splitlines() if "Unsupported" in line), str(err).splitlines()[0])
        raise CheckpointError(f"{file} is not a PyTorch checkpoint ({detail})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(f"{file} is not a PyTorch checkpoint ({type(err).__name__}: {err})") from None


def checkpoint_record(ckpt: Any, file: str | os.PathLike) -> dict:
    """The lightning-da record of a read checkpoint, checked for shape; a checkpoint without one
    (another library's, or one written before checkpoints carried it) is a :class:`CheckpointError`."""
    record = ckpt.get(RECORD_KEY) if isinstance(ckpt, dict) else None
    if not isinstance(record, dict):
        keys = sorted(map(str, ckpt))[:8] if isinstance(ckpt, dict) else type(ckpt).__name__
        kind = ("a Lightning checkpoint without lightning-da's record (written by another library, or by a "
                "lightning-da version whose checkpoints did not carry it)" if isinstance(ckpt, dict) and "state_dict" in ckpt
                else "not a lightning-da checkpoint (e.g. another library's weights)")
        raise CheckpointError(f"{file} is {kind}: it has no {RECORD_KEY!r} entry (it holds {keys}); "
                              "lightning-da loads the checkpoints its runs write")
    if not isinstance(record.get("format"), int) or record["format"] > RECORD_FORMAT:
        raise CheckpointError(f"{file}: record format {record.get('format')!r} is newer than this lightning-da "
                              f"reads ({RECORD_FORMAT}); upgrade lightning-da")
    for key, kind in (("config", str), ("classes", list), ("model_kwargs", dict)):
        if not isinstance(record.get(key), kind):
            raise CheckpointError(f"{file}: the record's {key!r} is missing or not a {kind.__name__}")
    if not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{file} has no state_dict")
    return record


# ---------------------------------------------------------------------------------------------- rebuilding
@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Hugging Face libraries offline while the model is rebuilt (nothing is downloaded)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def without_downloads(node: Any) -> Any:
    """A backbone config with every pretrained-weight source off (``pretrained`` false / null,
    no ``weights`` / ``weights_path``) and no text-cache file: the checkpoint holds the weights."""
    if isinstance(node, list):
        return [without_downloads(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for k, v in node.items():
        if k == "pretrained":
            out[k] = False if isinstance(v, bool) else None
        elif k in ("weights", "weights_path", "cache_file"):
            out[k] = None
        else:
            out[k] = without_downloads(v)
    return out


def rebuild_backbone(record: dict, assets_dir: str) -> torch.nn.Module | None:
    from hydra.utils import instantiate

    cfg = record.get("backbone")
    if not cfg:
        return None
    cfg = without_downloads(cfg)
    for name, files in (record.get("assets") or {}).items():  # text branches: tokenizer and config from the record
        folder = os.path.join(assets_dir, name)
        os.makedirs(folder)
        for fname, data in files.items():
            if os.sep in fname or fname.startswith(".") or not fname.endswith(ASSET_SUFFIXES):
                raise UntrustedCheckpointError(f"refused: the record's asset {fname!r} is not a tokenizer or config "
                                               f"file (a plain name ending in {', '.join(ASSET_SUFFIXES)})")
            Path(folder, fname).write_bytes(bytes(data))
        cfg[name] = {**cfg[name], "model": folder, "pretrained": False}
    for name in ("branch_t", "branch_v"):
        if isinstance(cfg.get(name), dict) and cfg[name].get("kind") == "transformers" and cfg[name].get("pretrained") is not False:
            raise CheckpointError(f"the checkpoint carries no tokenizer files for its text branch {name}")
    with offline():
        return instantiate(cfg, _convert_="all")


def load_weights(model: torch.nn.Module, state: dict, file: str | os.PathLike) -> list[str]:
    """Load ``state`` into ``model``: every tensor of the model must be in it; tensors of parts the
    model builds only for training (pseudo-label stores, M2CAN's discriminators: built when fitting
    starts) are skipped and their top-level names returned; anything else that does not fit raises."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise CheckpointError(f"{file} lacks {len(missing)} tensors of the rebuilt model, e.g. {missing[:4]}")
    extra = [k for k in state if k not in own]
    mismatched = [k for k in extra if isinstance(getattr(model, k.split(".")[0], None), torch.nn.Module)]
    if mismatched:
        raise CheckpointError(f"{file} has tensors the rebuilt model does not, e.g. {mismatched[:4]}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)
    return sorted({k.split(".")[0] for k in extra})


def full_width_inputs(model: torch.nn.Module, bases: dict) -> None:
    """HDA models trained in row-space coordinates: each such domain's projector back at its full width."""
    for domain, basis in (bases or {}).items():
        if not isinstance(basis, torch.Tensor) or basis.ndim != 2:
            raise CheckpointError(f"the record's input basis of {domain!r} is not a matrix")
        model.backbone.to_full_width(domain, basis)


# ---------------------------------------------------------------------------------------------- the loaded model
@dataclass
class LoadedModel:
    """An adapted model ready for use (:func:`load_model`).

    ``model``: the method in evaluation mode on ``device``; ``model(x)`` gives logits of a
    preprocessed batch. ``preprocess``: what the model takes and how a raw sample becomes it
    (:mod:`lightning_da.data.preprocess`: ``ImageInput`` (channels, size), ``FeatureInput`` (width),
    ``MultiModalInput``); None when the run's data did not describe it. ``classes``: the class names
    in label order. ``applies_to``: for HDA models, the domain whose projector the model applies.
    """

    model: torch.nn.Module
    preprocess: ModelInput | None
    classes: list[str]
    device: torch.device
    checkpoint: Path
    config: DictConfig
    record: dict = field(repr=False)
    applies_to: str | None = None

    @property
    def method(self) -> str:
        return type(self.model).__name__

    def describe(self) -> str:
        takes = self.preprocess.summary() if self.preprocess is not None else "inputs of an undescribed kind"
        hda = f"; applies the {self.applies_to} domain's projector" if self.applies_to else ""
        return (f"{self.method} ({len(self.classes)} classes) from {self.checkpoint}: takes {takes}{hda}; "
                f"on {self.device}")

    def to_device(self, x: Any) -> Any:
        from lightning.pytorch.utilities import move_data_to_device

        return move_data_to_device(x, self.device)

    @torch.no_grad()
    def logits(self, x: Any) -> torch.Tensor:
        """Logits of a preprocessed batch, after checking that the model can take it (:class:`InputError`)."""
        if self.preprocess is not None:
            self.preprocess.check(x)
        return self.model(self.to_device(x))

    def probabilities(self, x: Any) -> torch.Tensor:
        return self.logits(x).float().softmax(-1)

    def predict(self, x: Any) -> list[str]:
        """The predicted class names of a preprocessed batch."""
        return [self.classes[i] for i in self.logits(x).argmax(-1).tolist()]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} asked for, but CUDA is not available here; use device='cpu'")
    return device


def load_model(path: str | os.PathLike, device: str | torch.device | None = "cpu", checkpoint: str = "last",
               trust: Sequence[str] = ()) -> LoadedModel:
    """The adapted model of a run folder or checkpoint, ready for use (module docstring).

    ``checkpoint``: for a run folder, ``last`` (the weights after the last step) or ``best`` (the
    best by the run's monitor). ``device``: ``cpu``, ``cuda``, ``cuda:1``, or ``auto``. ``trust``:
    further packages whose ``_target_``s may be built (:func:`lightning_da.record.check_config`).
    Raises :class:`UntrustedCheckpointError` (pickled objects, targets outside the allow-list) before
    anything is built, and :class:`CheckpointError` for a folder or file without a usable checkpoint.
    """
    from hydra.utils import get_class

    from lightning_da.methods.base import DAMethod
    from lightning_da.train import build_method

    file = find_checkpoint(path, checkpoint)
    ckpt = read_checkpoint(file)
    record = checkpoint_record(ckpt, file)
    try:
        config = yaml.safe_load(record["config"])
    except yaml.YAMLError as err:
        raise CheckpointError(f"{file}: the record's config is not YAML ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("method"), dict):
        raise CheckpointError(f"{file}: the record's config has no method section")
    trust = tuple(trust)
    check_config(config, trust)
    check_config({"backbone": record.get("backbone")}, trust)
    method_cls = get_class(check_target(config["method"].get("_target_"), "the stored config at method._target_",
                                        (*("lightning_da",), *trust)))
    if not (isinstance(method_cls, type) and issubclass(method_cls, DAMethod)):
        raise UntrustedCheckpointError(f"refused: the stored method {config['method']['_target_']!r} is not a "
                                       "lightning-da method (a DAMethod subclass)")
    preprocess = build_input(record.get("input"))  # checks the input transforms' targets too
    cfg = OmegaConf.create(config)
    classes = [str(c) for c in record["classes"]]
    data_kwargs = dict(record["model_kwargs"])
    if method_cls.needs_for(OmegaConf.to_container(cfg.method)).class_names:
        data_kwargs["class_names"] = list(classes)
    with tempfile.TemporaryDirectory() as assets:
        backbone = rebuild_backbone(record, assets)
        with offline():
            model = build_method(cfg, backbone, len(classes), data_kwargs)
    load_weights(model, ckpt["state_dict"], file)
    full_width_inputs(model, record.get("input_bases"))
    dev = resolve_device(device)
    model.eval().to(dev)
    applies_to = "target" if type(model.backbone).__name__ == "DomainProjectors" else None
    return LoadedModel(model, preprocess, classes, dev, file, cfg, record, applies_to)


def add_load_arguments(parser) -> None:
    """The command-line arguments that say which model to load (``predict`` and ``export``)."""
    parser.add_argument("model", help="a run folder or a checkpoint file")
    parser.add_argument("--checkpoint", choices=CHECKPOINTS, default="last", help="for a run folder (default: last)")
    parser.add_argument("--trust", action="append", default=[], metavar="PACKAGE",
                        help="a package whose _target_s the checkpoint may name beyond the allow-list (repeatable)")


def run_cli(main) -> None:
    """Run a command's ``main()``; bad input (a missing or refused checkpoint, input the model cannot
    take, a missing extra) ends it with its message instead of a traceback."""
    try:
        main()
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as err:
        sys.exit(f"error: {err}")


__all__ = ["CheckpointError", "InputError", "LoadedModel", "UntrustedCheckpointError", "find_checkpoint", "load_model",
           "read_checkpoint"]
