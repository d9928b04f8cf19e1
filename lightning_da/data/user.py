"""A user's own data in one ``data=`` choice and two paths (``data=image_folder``, ``data=features``).

* :func:`image_folders`: each domain is a folder in ImageFolder layout (``<path>/<class>/<image>``)
  or an image-list file (``path label`` lines). A folder with a ``train`` sub-folder and a ``test``
  (or ``val``) sub-folder gives a held-out evaluation split; a list file ``x.txt`` with a sibling
  ``x_test.txt`` (or ``x_val.txt``) likewise. Without one the target is evaluated on its own train
  set (transductive; the run's log says so). Class names come from the folders (or
  ``class_names`` for lists). Several sources (``sources=[...]``) make a multi-source DataModule.
* :func:`feature_files`: each domain is one feature file (npz / npy / mat / pt, keys configurable,
  defaults ``features`` / ``labels``), labels 0- or 1-based (detected from both files, or stated),
  class names ``0..C-1`` unless given. ``labeled_per_class=k`` draws ``k`` labelled target samples
  per class (split ``split``, seeded): the semi-supervised HDA setting (SSAN, ``hda_net``,
  ``target_only``) as full batches; ``labeled_per_class=null`` gives unsupervised DA on the features
  (an ``mlp`` backbone).

Domains are named after their paths (the last folder or file stem).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np

from lightning_da.data.datamodule import DADataModule
from lightning_da.data.domain import DataError
from lightning_da.data.features import FEATURE_KEYS, LABEL_KEYS, _pick, feature_domain, is_text, open_arrays, text_labels
from lightning_da.data.full_batch import FullBatchDataModule
from lightning_da.data.images import image_domain

log = logging.getLogger(__name__)
LIST_SUFFIXES = (".txt", ".list", ".lst", ".csv", ".tsv")
UDA_SOURCE_HOLDOUT = 0.1  # feature UDA: the source fraction held out for val/source_acc (as data=image_folder)


def _names(paths: Sequence[str]) -> list[str]:
    """A distinct domain name per path: the folder or file stem (the parent's name in front when two clash)."""
    names = []
    for p in paths:
        path = Path(p)
        if path.name in ("train", "images") and path.parent.name:
            path = path.parent
        name = path.stem if path.is_file() else path.name
        base, k = name, 2
        while name in names:
            name = f"{base}_{k}"
            k += 1
        names.append(name)
    return names


def _image_spec(path: str, test: str | None) -> dict:
    """The ``image_domain`` arguments of one user path (ImageFolder or list, held-out split detected)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data path {str(p.absolute())!r} does not exist; give an image folder (<path>/<class>/<image>) "
                        "or an image-list file ('path label' lines)")
    spec: dict = {}
    if p.is_file():
        spec["list_file"] = str(p.absolute())
        if test is None:
            test = next((str(q) for q in (p.with_name(f"{p.stem}_{s}{p.suffix}") for s in ("test", "val")) if q.is_file()), None)
    else:
        if (p / "train").is_dir():
            spec["path"] = str((p / "train").absolute())
            if test is None:
                test = next((str(p / s) for s in ("test", "val") if (p / s).is_dir()), None)
        else:
            spec["path"] = str(p.absolute())
    if test is not None:
        t = Path(test).expanduser()
        if not t.exists():
            raise DataError(f"evaluation split {str(t.absolute())!r} does not exist")
        spec["test_list_file" if t.is_file() else "test_path"] = str(t.absolute())
    return spec


def image_folders(target: str, source: str | None = None, sources: Sequence[str] | None = None,
                  target_test: str | None = None, class_names: Sequence[str] | None = None,
                  domain_args: dict | None = None, verify_images: bool = False, **datamodule_args) -> DADataModule:
    """A :class:`DADataModule` over the user's image folders / lists (module docstring).
    ``target_test`` names the target's evaluation split explicitly; ``domain_args`` go to every
    :func:`~lightning_da.data.images.image_domain` (``transform``, ``allow_empty_classes``, ...);
    ``verify_images``: open every image once when the domains are built (before training) and list
    all unreadable files in one error."""
    if (source is None) == (sources is None):
        raise DataError("give one source path (data.source=/path/to/domain) or a list of them (data.sources=[...]), not both"
                        if source is not None else "no source domain: set data.source=/path/to/domain (or data.sources=[...])")
    src_paths = [source] if source is not None else list(sources)
    if not src_paths:
        raise DataError("data.sources is empty: give at least one source path")
    names = _names([*src_paths, target])
    specs = [_image_spec(p, None) for p in src_paths] + [_image_spec(target, target_test)]
    domains = {name: partial(image_domain, name=name, classes=class_names, **spec) for name, spec in zip(names, specs)}
    dm = DADataModule(domains, source=names[0] if source is not None else names[:-1], target=names[-1],
                      root=None, domain_args={**(domain_args or {}), "verify_images": verify_images}, **datamodule_args)
    if "test_path" not in specs[-1] and "test_list_file" not in specs[-1]:
        log.info("target %s has no test/val split: it is evaluated on its own training images (transductive)", target)
    return dm


def _raw_labels(path: str, labels_key, labels_path: str | None) -> np.ndarray:
    arrays = open_arrays(labels_path or path)
    if not hasattr(arrays, "keys"):  # a bare array (.npy, or a .pt tensor)
        if labels_path is None:
            raise DataError(f"{path} holds only a feature array: give its labels in a labels file")
        return np.asarray(arrays).reshape(-1)
    return np.asarray(_pick(arrays, labels_key, "labels", Path(labels_path or path))).reshape(-1)


def detect_label_base(label_sets: Sequence[np.ndarray]) -> int:
    """0 when any domain has a label 0, else 1 when the smallest label is 1 (MATLAB-style files)."""
    for y in label_sets:
        if y.size and not np.all(np.equal(np.mod(y, 1), 0)):
            raise DataError(f"labels must be integers (0..C-1 or 1..C) or class names (strings), not {y.dtype} values")
    lowest = min(int(y.min()) for y in label_sets if y.size)
    if lowest < 0:
        raise DataError(f"negative label {lowest}: labels must be 0..C-1 or 1..C")
    if lowest > 1:
        raise DataError(f"the smallest label is {lowest}: labels must be 0..C-1 or 1..C (state data.label_base)")
    return lowest


def feature_files(source: str, target: str, features_key: str | Sequence[str] = ("features", *FEATURE_KEYS),
                  labels_key: str | Sequence[str] = ("labels", *LABEL_KEYS), source_labels: str | None = None,
                  target_labels: str | None = None, label_base: int | str = "auto", class_names: Sequence[str] | None = None,
                  l2_normalize: bool = True, labeled_per_class: int | None = 3, split: int = 0, steps_per_epoch: int = 1000,
                  seed: int = 0, uda_loader: dict | None = None, row_space: bool = False,
                  source_holdout: float | None = None):
    """Two feature files as a DataModule (module docstring). ``source_labels`` / ``target_labels``:
    separate label files (needed for ``.npy`` features). ``steps_per_epoch`` and ``row_space``
    (:class:`~lightning_da.data.full_batch.FullBatchDataModule`) are the HDA setting's;
    ``uda_loader`` (batch size, iterations per epoch, ... of :class:`DADataModule`) and
    ``source_holdout`` (the fraction of the source held out for model selection, ``val/source_acc``;
    None: 0.1) the UDA one's. Labels are integers or class names (strings, mapped to indices in
    sorted order over both files; the names become the class names)."""
    paths = {"source": source, "target": target}
    label_paths = {"source": source_labels, "target": target_labels}
    for role, p in paths.items():
        if not Path(p).expanduser().is_file():
            raise DataError(f"data.{role}={p!r}: feature file not found (npz / npy / mat / pt with keys "
                            f"{features_key!r} and {labels_key!r})")
    raw = {r: _raw_labels(p, labels_key, label_paths[r]) for r, p in paths.items()}
    named = {r: is_text(y) for r, y in raw.items()}
    if any(named.values()):  # class names as labels: indices in sorted order over both domains
        if not all(named.values()):
            raise DataError(f"the source labels are {'names' if named['source'] else 'numbers'} but the target labels "
                            f"are {'names' if named['target'] else 'numbers'}: give both domains the same kind of labels")
        present = sorted(set().union(*(text_labels(y).tolist() for y in raw.values())))
        class_names = present if class_names is None else list(class_names)
        log.info("feature labels are class names: %d classes %s (index = position in this list)", len(class_names),
                 class_names[:10])
        label_base = 0
    else:
        if label_base == "auto":
            label_base = detect_label_base(list(raw.values()))
            log.info("feature labels are %d-based (detected; set data.label_base to state it)", label_base)
        n_classes = max(int(y.max()) for y in raw.values()) - int(label_base) + 1
        if class_names is None:
            class_names = [str(c) for c in range(n_classes)]
        elif len(class_names) < n_classes:
            raise DataError(f"data.class_names has {len(class_names)} names but the labels go up to class {n_classes - 1}")
    names = _names([source, target])
    if names[0] == names[1]:
        names = ["source", "target"]
    domains = {name: partial(feature_domain, name=name, path=str(Path(paths[role]).expanduser().absolute()),
                             labels_path=label_paths[role], features_key=features_key, labels_key=labels_key,
                             label_base=int(label_base), class_names=list(class_names), l2_normalize=l2_normalize)
               for name, role in zip(names, ("source", "target"))}
    if labeled_per_class is None:
        if row_space:
            raise ValueError("data.row_space applies to the semi-supervised full-batch setting only (a number for "
                             "data.labeled_per_class); remove it for unsupervised DA on features")
        holdout = UDA_SOURCE_HOLDOUT if source_holdout is None else source_holdout
        return DADataModule(domains, source=names[0], target=names[1], root=None, seed=seed, source_holdout=holdout,
                            **dict(uda_loader or {}))
    if source_holdout:
        raise ValueError(f"data.source_holdout={source_holdout} applies to unsupervised DA on features "
                         "(data.labeled_per_class=null); the semi-supervised heterogeneous setting trains on every "
                         "source row and reports the last checkpoint: remove data.source_holdout")
    return FullBatchDataModule(domains, source=names[0], target=names[1], labeled="random",
                               labeled_per_class=labeled_per_class, split=split, steps_per_epoch=steps_per_epoch, seed=seed,
                               row_space=row_space)
