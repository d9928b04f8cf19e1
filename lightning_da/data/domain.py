"""A domain: its labelled train split, an optional held-out test split and its class list."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset


class DataError(ValueError):
    """Bad input data: a wrong path, an empty domain, mismatched classes, an unreadable file."""


@dataclass
class Domain:
    name: str
    train: Dataset
    classes: list[str]
    test: Dataset | None = None
    info: dict = field(default_factory=dict)
    train_eval: Dataset | None = None  # the train split with the evaluation transform (default: train)
    #: the train split as ``((weak, strong), label)`` pairs (``data.views``); None: the domain has no strong view
    train_strong: Dataset | None = None
    #: what the evaluation splits do to a raw sample, as plain data (``data.preprocess``); a checkpoint
    #: carries it so that the model applies to new data. None: the builder does not describe it
    eval_input: dict | None = None

    def __post_init__(self):
        if self.train_eval is None:
            self.train_eval = self.train
        if len(self.train) == 0:
            raise DataError(f"domain {self.name!r} is empty: its train split has no samples")
        if self.test is not None and len(self.test) == 0:
            raise DataError(f"domain {self.name!r}: its test split has no samples")


class TensorImages(Dataset):
    """Images kept in memory as one uint8 tensor (N, C, H, W); returns ``(float image, label)``.

    Per item: ``augment`` (a uint8 -> uint8 transform, training splits), resizing to ``size`` when
    the stored images are smaller (large sizes are resized per item, not stored), then scaling to
    [0, 1] and ``(x - mean) / std`` per channel. With ``strong`` (a uint8 -> uint8 transform) an
    item is ``((weak, strong), label)``, both views from the same stored image.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,),
                 size: int | None = None, augment: Callable | None = None, strong: Callable | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise DataError(f"TensorImages expects uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels")
        c = images.shape[1]
        self.images, self.labels = images, labels.long()
        self.mean = torch.tensor(list(mean) * (c if len(mean) == 1 else 1)).view(c, 1, 1) * 255.0
        self.std = torch.tensor(list(std) * (c if len(std) == 1 else 1)).view(c, 1, 1) * 255.0
        self.size, self.augment, self.strong = size, augment, strong

    def __len__(self) -> int:
        return len(self.labels)

    def with_views(self, augment: Callable | None = None, strong: Callable | None = None) -> "TensorImages":
        """The same stored images with another per-item augmentation and/or strong view."""
        view = copy.copy(self)
        view.augment, view.strong = augment, strong
        return view

    def _finish(self, img: torch.Tensor) -> torch.Tensor:
        img = img.float()
        if self.size is not None and img.shape[-1] != self.size:
            img = torch.nn.functional.interpolate(img[None], size=(self.size, self.size), mode="bilinear",
                                                  align_corners=False)[0]
        return (img - self.mean) / self.std

    def __getitem__(self, i):
        img = self.images[i]
        weak = self._finish(self.augment(img) if self.augment is not None else img)
        if self.strong is None:
            return weak, self.labels[i]
        return (weak, self._finish(self.strong(img))), self.labels[i]


class WithIndex(Dataset):
    """Unlabelled view of a dataset: returns ``(x, index)`` so pseudo labels can be kept per sample."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i][0], i


def check_same_classes(domains: Sequence[Domain]) -> list[str]:
    """Return the common class list, or raise naming the difference between domains."""
    ref = domains[0]
    for d in domains[1:]:
        if list(d.classes) != list(ref.classes):
            extra = sorted(set(d.classes) - set(ref.classes))
            missing = sorted(set(ref.classes) - set(d.classes))
            detail = []
            if extra:
                detail.append(f"{d.name!r} has classes {ref.name!r} lacks: {extra}")
            if missing:
                detail.append(f"{d.name!r} lacks classes of {ref.name!r}: {missing}")
            if not detail:
                detail.append(f"same names in a different order: {ref.name!r} {list(ref.classes)} vs {d.name!r} {list(d.classes)}")
            raise DataError(f"class lists differ between domains {ref.name!r} ({len(ref.classes)} classes) and "
                            f"{d.name!r} ({len(d.classes)} classes): " + "; ".join(detail))
    return list(ref.classes)
