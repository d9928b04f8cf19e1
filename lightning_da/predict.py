"""Apply an adapted model to new data: ``python -m lightning_da.predict <run or ckpt> <input> --out predictions.csv``.

The input is read as the model's kind asks:

* image models: an image folder, searched recursively (an ImageFolder whose sub-folders are all
  class names of the model is labelled by them), an image list (``path [label]`` lines, 0-based
  labels as in training lists; relative paths from the list's folder), one image file, or an array
  file (``.npy`` / ``.npz`` / ``.pt``) of already preprocessed images ``(N, C, H, W)``;
* feature models: a feature file (``.npz``, ``.npy``, ``.mat``, ``.pt``; keys ``features`` / ``fts``
  / ``fea`` / ``X``, labels ``labels`` / ``gnd`` / ``y``, numbered as in the run's files);
* multi-modal models: a JSON list or JSON lines of samples with the model's inputs (M2CAN lists:
  ``{"text": [...], "image": [files], "label": ...}``, images relative to ``--image-root`` or the
  list's folder; review models: ``{"text": "...", "label": ...}``); labels are indices or class names.

Every sample gets the run's evaluation preprocessing (from the checkpoint). The CSV has one row per
sample: ``path`` (files) or ``index`` (rows of an array or list), the predicted class name, its
probability and, with ``--probs``, every class's probability. When every sample has a label, the
accuracy and mean per-class accuracy are printed, computed as the run's test computes them (the
same metric, the same evaluation batch size by default), so on the run's own evaluation split they
equal the run's test numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lightning_da.data.domain import DataError
from lightning_da.data.preprocess import FeatureInput, ImageInput, InputError, ModelInput, MultiModalInput
from lightning_da.load import add_load_arguments, load_model

LIST_SUFFIXES = (".txt", ".list", ".lst", ".csv", ".tsv")
ARRAY_SUFFIXES = (".npy", ".npz", ".pt", ".mat")
JSON_SUFFIXES = (".json", ".jsonl")


@dataclass
class Inputs:
    """Samples read from one input: ``dataset`` yields ``(model input, label or -1)``; ``ids`` name
    the samples (paths or row indices, ``id_name`` says which)."""

    dataset: Dataset
    ids: list[str]
    id_name: str
    labelled: bool
    description: str


class _Samples(Dataset):
    def __init__(self, items: Sequence[Any], labels: Sequence[int], transform):
        self.items, self.labels, self.transform = list(items), list(labels), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.transform(self.items[i]), self.labels[i]


# ---------------------------------------------------------------------------------------------- readers
def _image_files(folder: Path) -> list[Path]:
    from lightning_da.data.images import IMAGE_EXTENSIONS

    return sorted(Path(d, f) for d, _, files in os.walk(folder, followlinks=True) for f in files
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


def read_image_folder(folder: Path, model_input: ImageInput, classes: list[str]) -> Inputs:
    files = _image_files(folder)
    if not files:
        raise DataError(f"{folder} holds no image files (searched recursively)")
    subdirs = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    labelled = bool(subdirs) and set(subdirs) <= set(classes) and all(f.parent != folder for f in files)
    index = {c: i for i, c in enumerate(classes)}
    labels = [index[f.relative_to(folder).parts[0]] if labelled else -1 for f in files]
    what = (f"an ImageFolder of {len(files)} images in {len(subdirs)} class folders" if labelled else
            f"{len(files)} images (no class folders named after the model's classes: unlabelled)")
    return Inputs(_Samples(files, labels, model_input), [str(f) for f in files], "path", labelled, what)


def read_image_list(list_file: Path, model_input: ImageInput, classes: list[str], root: str | None) -> Inputs:
    base = Path(root) if root else list_file.parent
    files, labels = [], []
    for line_no, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        path, _, label = line.strip().rpartition(" ")
        if not path or not label.lstrip("-").isdigit():  # a bare path: unlabelled
            path, label = line.strip(), None
        p = Path(path) if os.path.isabs(path) else base / path
        if not p.is_file():
            raise DataError(f"{list_file}:{line_no}: image {p} not found")
        if label is not None and not 0 <= int(label) < len(classes):
            raise InputError(f"{list_file}:{line_no}: label {label} outside 0..{len(classes) - 1} ({len(classes)} classes)")
        files.append(p)
        labels.append(-1 if label is None else int(label))
    if not files:
        raise DataError(f"image list {list_file} is empty")
    labelled = all(y >= 0 for y in labels)
    return Inputs(_Samples(files, labels, model_input), [str(f) for f in files], "path", labelled,
                  f"an image list of {len(files)} images{'' if labelled else ' (not all labelled)'}")


def _arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(array, labels or None) of an array file: a bare array, or the first feature and label keys present."""
    from lightning_da.data.features import FEATURE_KEYS, LABEL_KEYS, _pick, open_arrays

    arrays = open_arrays(path)
    if isinstance(arrays, (np.ndarray, torch.Tensor)):
        return np.asarray(arrays), None
    x = _pick(arrays, ("features", "images", *FEATURE_KEYS), "features", path)
    present = [k for k in LABEL_KEYS if k in arrays]
    return x, (np.asarray(arrays[present[0]]).reshape(-1) if present else None)


def read_image_array(path: Path, model_input: ImageInput, classes: list[str]) -> Inputs:
    x, y = _arrays(path)
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if x.ndim != 4:
        raise InputError(f"{path} holds an array of shape {tuple(x.shape)}; this model takes images "
                         f"({model_input.summary()}): give image files, or preprocessed images as (N, C, H, W)")
    model_input.check(x)
    labels = [-1] * len(x) if y is None else [int(v) for v in y]
    if y is not None and (len(labels) != len(x) or not all(0 <= v < len(classes) for v in labels)):
        raise InputError(f"{path}: labels must be {len(x)} class indices in 0..{len(classes) - 1}")
    return Inputs(_Samples(list(x), labels, lambda t: t), [str(i) for i in range(len(x))], "index", y is not None,
                  f"{len(x)} preprocessed images from {path.name}")


def read_features(path: Path, model_input: FeatureInput) -> Inputs:
    if path.is_dir():
        raise InputError(f"{path} is a folder; this model takes feature rows ({model_input.summary()}): give a "
                         "feature file (.npz, .npy, .mat, .pt)")
    if path.suffix.lower() not in ARRAY_SUFFIXES:
        raise InputError(f"{path} is not a feature file; this model takes {model_input.summary()} from a .npz, "
                         ".npy, .mat or .pt file")
    x, y = _arrays(path)
    x = model_input(x, f"feature file {path}")
    labels = [-1] * len(x) if y is None else model_input.encode_labels(y, f"feature file {path}").tolist()
    if y is not None and len(labels) != len(x):
        raise InputError(f"{path}: {len(x)} feature rows but {len(labels)} labels")
    return Inputs(_Samples(list(x), labels, lambda t: t), [str(i) for i in range(len(x))], "index", y is not None,
                  f"{len(x)} feature rows ({x.shape[1]}-d) from {path.name}")


def read_multimodal(path: Path, model_input: MultiModalInput, classes: list[str], root: str | None) -> Inputs:
    if path.suffix.lower() not in JSON_SUFFIXES:
        raise InputError(f"{path}: this model takes {model_input.summary()}, as a JSON list or JSON lines file")
    raw = path.read_text(encoding="utf-8")
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError:
        entries = [json.loads(line) for line in raw.splitlines() if line.strip()]
    entries = [entries] if isinstance(entries, dict) else entries
    if not entries or not all(isinstance(e, dict) and "text" in e for e in entries):
        raise InputError(f"{path}: expected a JSON list of samples with a 'text' entry each")
    index = {c: i for i, c in enumerate(classes)}
    labels = []
    for i, e in enumerate(entries):
        label = e.get("label")
        if label is None:
            labels.append(-1)
        elif isinstance(label, str) and label in index:
            labels.append(index[label])
        elif isinstance(label, int) and not isinstance(label, bool) and 0 <= label < len(classes):
            labels.append(label)
        else:
            raise InputError(f"{path} entry {i}: label {label!r} is neither a class name {classes} nor an index")
    dataset = model_input.dataset(entries, labels, root or str(path.parent))
    labelled = all(y >= 0 for y in labels)
    return Inputs(dataset, [str(i) for i in range(len(entries))], "index", labelled,
                  f"{len(entries)} samples from {path.name}")


def read_inputs(path: str | os.PathLike, model_input: ModelInput | None, classes: list[str],
                image_root: str | None = None) -> Inputs:
    """The samples of ``path`` for a model taking ``model_input`` (module docstring)."""
    p = Path(path).expanduser()
    if model_input is None:
        raise InputError("this checkpoint does not describe its input preprocessing (its data's domains give no "
                         "eval_input), so raw data cannot be prepared for it; call model.logits on preprocessed batches")
    if not p.exists():
        raise FileNotFoundError(f"input {p} does not exist")
    if isinstance(model_input, FeatureInput):
        return read_features(p, model_input)
    if isinstance(model_input, MultiModalInput):
        return read_multimodal(p, model_input, classes, image_root)
    if p.is_dir():
        return read_image_folder(p, model_input, classes)
    suffix = p.suffix.lower()
    if suffix in LIST_SUFFIXES:
        return read_image_list(p, model_input, classes, image_root)
    if suffix in ARRAY_SUFFIXES:
        return read_image_array(p, model_input, classes)
    return Inputs(_Samples([p], [-1], model_input), [str(p)], "path", False, f"the image {p.name}")


# ---------------------------------------------------------------------------------------------- prediction
def default_batch_size(loaded) -> int:
    """The run's evaluation batch size (so that a run's own split gives its test numbers), else 256."""
    data = loaded.config.get("data") or {}
    size = data.get("eval_batch_size") or (data.get("uda_loader") or {}).get("eval_batch_size")
    return int(size) if isinstance(size, int) and size > 0 else 256


def predict(loaded, inputs: Inputs, batch_size: int | None = None, num_workers: int = 0,
            progress: bool = True) -> dict[str, Any]:
    """Class probabilities of every sample of ``inputs``; with labels, the accuracy and the mean per-class
    accuracy (torchmetrics' ``MulticlassAccuracy``, micro and macro, as the run's test)."""
    from torchmetrics.classification import MulticlassAccuracy
    from tqdm import tqdm

    loader = DataLoader(inputs.dataset, batch_size=batch_size or default_batch_size(loaded), shuffle=False,
                        num_workers=num_workers)
    probs, labels = [], []
    for x, y in tqdm(loader, desc="predict", unit="batch", disable=not progress, file=sys.stderr):
        probs.append(loaded.probabilities(x).cpu())
        labels.append(torch.as_tensor(y))
    p, y = torch.cat(probs), torch.cat(labels)
    out: dict[str, Any] = {"ids": inputs.ids, "id_name": inputs.id_name, "probabilities": p,
                           "predictions": p.argmax(1), "labels": y if inputs.labelled else None}
    if inputs.labelled:
        c = len(loaded.classes)
        out["accuracy"] = float(MulticlassAccuracy(c, average="micro")(p, y))
        out["accuracy_mean_class"] = float(MulticlassAccuracy(c, average="macro")(p, y))
    return out


def write_csv(result: dict, classes: list[str], out: str | os.PathLike, probs: bool = False) -> None:
    p = result["probabilities"]
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow([result["id_name"], "prediction", "probability", *([f"prob_{c}" for c in classes] if probs else [])])
        for i, sample in enumerate(result["ids"]):
            k = int(result["predictions"][i])
            row = [sample, classes[k], f"{float(p[i, k]):.6f}"]
            if probs:
                row += [f"{float(v):.6f}" for v in p[i]]
            w.writerow(row)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m lightning_da.predict", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_load_arguments(ap)
    ap.add_argument("input", help="image folder / image list / image / array file, feature file, or JSON list")
    ap.add_argument("--out", default="predictions.csv", help="the CSV to write (default: predictions.csv)")
    ap.add_argument("--probs", action="store_true", help="also write every class's probability")
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default: auto)")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the run's evaluation batch size")
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--image-root", default=None, help="folder that relative image paths start from")
    args = ap.parse_args(argv)
    loaded = load_model(args.model, device=args.device, checkpoint=args.checkpoint, trust=args.trust)
    print(f"model: {loaded.describe()}", file=sys.stderr)
    inputs = read_inputs(args.input, loaded.preprocess, loaded.classes, args.image_root)
    print(f"input: {inputs.description}", file=sys.stderr)
    result = predict(loaded, inputs, args.batch_size, args.num_workers)
    write_csv(result, loaded.classes, args.out, args.probs)
    print(f"wrote {len(inputs.ids)} predictions to {args.out}")
    if "accuracy" in result:
        print(f"accuracy {100 * result['accuracy']:.2f}% (mean per class {100 * result['accuracy_mean_class']:.2f}%) "
              f"on {len(inputs.ids)} labelled samples")
    return result


if __name__ == "__main__":
    from lightning_da.load import run_cli

    run_cli(main)
