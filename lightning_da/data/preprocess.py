"""A domain's evaluation preprocessing as plain data, and the same preprocessing rebuilt from it.

Every domain builder describes what its evaluation splits do to a raw sample
(``Domain.eval_input``): a dict of plain values that a checkpoint carries, so that a model can be
applied to new data without the run's config, data or Hydra (:func:`build_input`). Kinds:

* ``image``: ``{"kind": "image", "load": "rgb" | "as_stored", "ops": [{"_target_": ..., **kwargs}, ...]}``.
  The file is opened with PIL and converted to RGB (``rgb``: image folders and lists) or kept grey
  or RGB as stored (``as_stored``: digit images), then the ops run in order: torchvision's
  ``Resize``, ``CenterCrop``, ``Grayscale``, ``ToTensor``, ``Normalize`` (:func:`describe_transform`)
  or :class:`DigitImage`.
* ``features``: ``{"kind": "features", "width": d, "l2_normalize": bool, "label_base": b,
  "label_values": [...]}``: rows of ``d`` features, L2-normalised per row when the run did; a raw
  label ``v`` of a feature file is class ``label_values.index(v - label_base)``.
* ``multimodal``: ``{"kind": "multimodal", "inputs": {name: spec}}``, one spec per named input:
  ``texts`` (M2CAN lists: a sample's texts cleaned and joined, ``join``), ``image_set`` (up to
  ``max_images`` images per sample, each through ``ops``, zero-padded, with a mask), ``text`` (one
  review) and ``bag_of_words`` (``vocabulary``: the words in column order).

Only allow-listed ``_target_``s are rebuilt (:func:`lightning_da.record.check_target`).
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lightning_da.data.domain import DataError

TORCHVISION = "torchvision.transforms."


class InputError(ValueError):
    """Input a model cannot take: the wrong kind, channels, size or feature width."""


# ---------------------------------------------------------------------------------------------- images
def open_image(path: str | os.PathLike, load: str = "rgb") -> Image.Image:
    """The image at ``path`` as the run's data read it: RGB (``rgb``), or grey / RGB as stored
    (``as_stored``; other modes become RGB). An unreadable file is a :class:`DataError` naming it."""
    try:
        with Image.open(path) as im:
            if load == "rgb":
                return im.convert("RGB")
            return im.convert(im.mode if im.mode in ("L", "RGB") else "RGB")
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


class DigitImage:
    """A digit image as the digit domains serve it (``data.digits``): grey or RGB turned into
    ``channels``, resized to ``image_size`` (``resize``: antialiased bilinear or PIL bicubic, as
    uint8), then scaled and normalised per item as :class:`~lightning_da.data.domain.TensorImages`
    does: the same code, so the values are identical to the run's."""

    def __init__(self, image_size: int, channels: int, mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,),
                 resize: str = "bilinear"):
        self.image_size, self.channels, self.mean, self.std = int(image_size), int(channels), list(mean), list(std)
        self.resize = resize

    def __call__(self, img: Image.Image) -> torch.Tensor:
        from lightning_da.data.digits import _prepare
        from lightning_da.data.domain import TensorImages

        x = _prepare(np.array(img)[None], self.image_size, self.channels, self.resize)
        return TensorImages(x, torch.zeros(1), self.mean, self.std, size=self.image_size)[0][0]

    def describe(self) -> dict:
        return {"_target_": f"{__name__}.DigitImage", "image_size": self.image_size, "channels": self.channels,
                "mean": self.mean, "std": self.std, "resize": self.resize}


def _plain(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, torch.Tensor):
        return v.tolist()
    return v


def describe_transform(transform) -> list[dict]:
    """The ops of an evaluation transform (a torchvision ``Compose`` or one op) as plain data."""
    from torchvision import transforms as T

    ops = transform.transforms if isinstance(transform, T.Compose) else [transform]
    out = []
    for t in ops:
        if isinstance(t, DigitImage):
            out.append(t.describe())
        elif isinstance(t, T.Resize):
            out.append({"_target_": TORCHVISION + "Resize", "size": _plain(t.size), "interpolation": t.interpolation.value,
                        "max_size": t.max_size, "antialias": t.antialias})
        elif isinstance(t, T.CenterCrop):
            out.append({"_target_": TORCHVISION + "CenterCrop", "size": _plain(t.size)})
        elif isinstance(t, T.Grayscale):
            out.append({"_target_": TORCHVISION + "Grayscale", "num_output_channels": t.num_output_channels})
        elif isinstance(t, T.ToTensor):
            out.append({"_target_": TORCHVISION + "ToTensor"})
        elif isinstance(t, T.Normalize):
            out.append({"_target_": TORCHVISION + "Normalize", "mean": _plain(t.mean), "std": _plain(t.std)})
        else:
            raise ValueError(f"cannot describe the evaluation transform {type(t).__name__} as plain data (known: "
                             "Resize, CenterCrop, Grayscale, ToTensor, Normalize, DigitImage)")
    return out


def build_ops(ops: list[dict]):
    """The transform described by :func:`describe_transform` (allow-listed targets only)."""
    from hydra.utils import get_class
    from torchvision import transforms as T

    from lightning_da.record import check_target

    built = []
    for op in ops:
        target = op.get("_target_") if isinstance(op, dict) else None
        check_target(target, "an input transform")
        kwargs = {k: v for k, v in op.items() if k != "_target_"}
        if "interpolation" in kwargs:
            kwargs["interpolation"] = T.InterpolationMode(kwargs["interpolation"])
        built.append(get_class(target)(**kwargs))
    return T.Compose(built)


def image_description(load: str, transform) -> dict:
    return {"kind": "image", "load": load, "ops": describe_transform(transform)}


# ---------------------------------------------------------------------------------------------- features
def feature_description(width: int, l2_normalize: bool, label_base: int, label_values: Sequence[int],
                        label_names: Sequence[str] | None = None) -> dict:
    """``label_names``: the run's labels were class names (strings), in class order."""
    out = {"kind": "features", "width": int(width), "l2_normalize": bool(l2_normalize), "label_base": int(label_base),
           "label_values": [int(v) for v in label_values]}
    if label_names is not None:
        out["label_names"] = [str(n) for n in label_names]
    return out


# ---------------------------------------------------------------------------------------------- the rebuilt input
class ModelInput:
    """What a model takes and how a raw sample becomes it (built from a checkpoint's description).

    ``kind``: ``image``, ``features`` or ``multimodal``; ``description``: the plain data it was built
    from. :meth:`check` raises :class:`InputError`, naming the problem, for a batch the model cannot take.
    """

    kind = ""

    def __init__(self, description: dict):
        self.description = description

    def check(self, x: Any) -> None:
        raise NotImplementedError

    def summary(self) -> str:
        raise NotImplementedError


class ImageInput(ModelInput):
    """Images: :meth:`__call__` turns a file path or PIL image into the model's ``(C, H, W)`` tensor.

    ``channels``, ``size`` (``(H, W)`` of the evaluation transform's output) and ``fixed_size``
    (the network takes that size only, e.g. LeNet) describe the input the model takes."""

    kind = "image"

    def __init__(self, description: dict):
        super().__init__(description)
        self.load = description.get("load", "rgb")
        if self.load not in ("rgb", "as_stored"):
            raise InputError(f"unknown image loading {self.load!r} in the checkpoint's input description")
        self.transform = build_ops(description.get("ops") or [])
        shape = description.get("shape") or [None, None, None]
        self.channels, self.size = shape[0], tuple(shape[1:])
        self.fixed_size = bool(description.get("fixed_size"))

    def __call__(self, image: str | os.PathLike | Image.Image) -> torch.Tensor:
        if not isinstance(image, Image.Image):
            image = open_image(image, self.load)
        elif self.load == "rgb" or image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        return self.transform(image)

    def summary(self) -> str:
        h, w = self.size
        return f"{self.channels}-channel images, {h}x{w} px{' only' if self.fixed_size else ''}"

    def check(self, x: Any) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            got = f"a {x.ndim}-d tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"this model takes a batch of images (N, C, H, W) ({self.summary()}); got {got}")
        if self.channels is not None and x.shape[1] != self.channels:
            raise InputError(f"this model takes {self.channels}-channel images, got {x.shape[1]} channels "
                             f"(batch of shape {tuple(x.shape)})")
        if self.fixed_size and tuple(x.shape[2:]) != self.size:
            raise InputError(f"this model takes {self.size[0]}x{self.size[1]} px images only (its backbone flattens "
                             f"a fixed-size feature map), got {x.shape[2]}x{x.shape[3]} px")


class FeatureInput(ModelInput):
    """Feature rows: :meth:`__call__` checks their width and L2-normalises them as the run did."""

    kind = "features"

    def __init__(self, description: dict):
        super().__init__(description)
        self.width = int(description["width"])
        self.l2_normalize = bool(description.get("l2_normalize"))
        self.label_base = int(description.get("label_base", 0))
        self.label_values = [int(v) for v in description.get("label_values") or []]
        self.label_names = description.get("label_names")

    def summary(self) -> str:
        return f"{self.width}-d feature rows"

    def check(self, x: Any, source: str = "a batch") -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 2:
            got = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"this model takes a (samples x {self.width}) feature matrix; {source} has {got}")
        if x.shape[1] != self.width:
            raise InputError(f"{source} has {x.shape[1]}-d feature rows, but this model takes {self.width}-d features "
                             "(the width of the target domain it was trained on)")

    def __call__(self, rows: Any, source: str = "the input") -> torch.Tensor:
        from lightning_da.data.features import l2_normalize_rows

        x = torch.as_tensor(np.asarray(rows, dtype=np.float32) if not isinstance(rows, torch.Tensor) else rows).float()
        if x.ndim == 1:
            x = x[None]
        self.check(x, source)
        return l2_normalize_rows(x) if self.l2_normalize else x

    def encode_labels(self, raw: Any, source: str = "the input") -> torch.Tensor:
        """Raw labels of a feature file (the run's numbering, ``label_base`` included, or its class names)
        as class indices."""
        from lightning_da.data.features import is_text, text_labels

        if self.label_names is not None or is_text(raw):
            names = text_labels(raw) if is_text(raw) else np.asarray(raw).reshape(-1).astype(str)
            index = {n: i for i, n in enumerate(self.label_names or [])}
            unknown = sorted(set(names.tolist()) - set(index))
            if unknown:
                raise InputError(f"{source} has labels {unknown[:10]} the model does not know; its classes are "
                                 f"{list(index)}")
            return torch.tensor([index[n] for n in names.tolist()], dtype=torch.long)
        y = np.asarray(raw).reshape(-1).astype(np.int64) - self.label_base
        index = {v: i for i, v in enumerate(self.label_values)}
        unknown = sorted({int(v) + self.label_base for v in y if int(v) not in index})
        if unknown:
            raise InputError(f"{source} has labels {unknown[:10]} the model does not know; its labels are "
                             f"{[v + self.label_base for v in self.label_values]}")
        return torch.tensor([index[int(v)] for v in y], dtype=torch.long)


class MultiModalInput(ModelInput):
    """Samples with several named inputs (texts, image sets, bags of words): :meth:`dataset` turns
    entries (dicts as in M2CAN's JSON lists, or ``{"text": review}``) into the run's evaluation samples."""

    kind = "multimodal"

    def __init__(self, description: dict):
        super().__init__(description)
        self.inputs = dict(description.get("inputs") or {})
        kinds = {spec.get("kind") for spec in self.inputs.values()}
        if not kinds <= {"texts", "image_set", "text", "bag_of_words"}:
            raise InputError(f"unknown multi-modal inputs {sorted(kinds)} in the checkpoint's input description")
        self.reviews = "bag_of_words" in kinds
        self.image_ops = {n: build_ops(s["ops"]) for n, s in self.inputs.items() if s.get("kind") == "image_set"}

    def summary(self) -> str:
        return "samples with inputs " + ", ".join(f"{n} ({s['kind']})" for n, s in self.inputs.items())

    def check(self, x: Any) -> None:
        missing = sorted(set(self.inputs) - set(x)) if isinstance(x, dict) else sorted(self.inputs)
        if missing:
            raise InputError(f"this model takes {self.summary()}; the batch lacks {missing}")

    def dataset(self, entries: list[dict], labels: Sequence[int], image_root: str = "") -> Dataset:
        """The evaluation samples of ``entries`` (``labels``: class indices, -1 for unlabelled)."""
        from lightning_da.data.multimodal import MultiModalList, ReviewSamples

        y = torch.as_tensor(list(labels), dtype=torch.long)
        if self.reviews:
            vocab = next(s["vocabulary"] for s in self.inputs.values() if s["kind"] == "bag_of_words")
            return ReviewSamples([str(e["text"]) for e in entries], y, {w: i for i, w in enumerate(vocab)})
        (name, spec), = [(n, s) for n, s in self.inputs.items() if s["kind"] == "image_set"]
        texts = next((s for s in self.inputs.values() if s["kind"] == "texts"), {"join": "bert"})
        rows = [{"text": e["text"] if isinstance(e["text"], list) else [e["text"]],
                 "image": e["image"] if isinstance(e["image"], list) else [e["image"]], "label": int(label)}
                for e, label in zip(entries, y.tolist())]
        for i, r in enumerate(rows):
            if len(r["image"]) > spec["max_images"]:
                raise InputError(f"entry {i} has {len(r['image'])} images; this model takes at most {spec['max_images']}")
        return MultiModalList(rows, image_root, max_images=spec["max_images"], weak_transform=self.image_ops[name],
                              join=texts.get("join", "bert"), crop=spec["crop"])


def build_input(description: dict | None) -> ModelInput | None:
    """The :class:`ModelInput` of a checkpoint's input description (None: it has none)."""
    if not description:
        return None
    kind = description.get("kind")
    builders = {"image": ImageInput, "features": FeatureInput, "multimodal": MultiModalInput}
    if kind not in builders:
        raise InputError(f"unknown input kind {kind!r} in the checkpoint (known: {sorted(builders)})")
    return builders[kind](description)
