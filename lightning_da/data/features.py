"""Feature-matrix domains (heterogeneous DA): one row of pre-extracted features per sample.

Readers, by file suffix:

* ``.mat``: MATLAB v5 (``scipy.io.loadmat``) and v7.3 (HDF5, read with ``h5py``; MATLAB stores
  column-major, so every array is transposed back to MATLAB's ``rows x cols``).
* ``.npz``: arrays by key. ``.pt``: a dict of tensors / arrays by key (or a bare tensor: features).
* ``.npy``: one array, the features; labels then come from ``labels_path``.

:func:`feature_domain` builds a :class:`~lightning_da.data.domain.Domain` whose ``train`` split is a
:class:`FeatureTensors` (``features`` float32 ``(n, d)``, ``labels`` int64 ``(n,)``) with:

* labels shifted by ``label_base`` (1 for MATLAB's 1..C) and mapped to ``0..C-1`` in sorted
  order; ``classes`` are the label values present (or ``class_names[value]``), so domains whose
  label sets differ fail :func:`~lightning_da.data.domain.check_same_classes` by name; labels given
  as class names (strings, MATLAB cellstr) are indices into ``class_names`` (default: sorted names);
* features holding NaN or Inf refused (:func:`require_finite`: the domain, the file, the rows);
* optional per-row L2 normalisation (``l2_normalize``; SSAN normalises every feature type);
* ``info["dim"]`` (the feature width) and, when ``splits_key`` names pre-drawn labelled-target
  splits (DeCAF6's ``target_idx``: ``k x n_splits`` indices, ``split_base=1``),
  ``info["splits"] = {split: LongTensor of 0-based row indices}``.

:func:`shda_source_domain` and :func:`shda_target_domain` read the SHDA layout (yyyaoyuan/SHDA, used
for text-to-image and text-to-text HDA): a source file with ``source_features`` / ``source_labels``,
and a target file with cells ``training_features[0, i]`` / ``training_labels[0, i]`` (the labelled
target of split ``i``) and ``testing_features[0, i]`` / ``testing_labels[0, i]`` (the unlabelled
target, which is also the evaluation set). The target domain stacks ``[training; testing]`` of one
split and records the labelled rows as ``info["splits"] = {i: arange(n_training)}``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from lightning_da.data.domain import DataError, Domain
from lightning_da.data.preprocess import feature_description

FEATURE_KEYS = ("features", "fts", "fea", "X", "x")
LABEL_KEYS = ("labels", "gnd", "label", "y", "Y")


class FeatureTensors(Dataset):
    """Features ``(n, d)`` float32 and labels ``(n,)`` int64, kept as two tensors."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        if len(features) != len(labels):
            raise DataError(f"{len(features)} feature rows but {len(labels)} labels")
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.features[i], self.labels[i]


# ---------------------------------------------------------------------------------------- reading
class _Mat73:
    """A MATLAB v7.3 (HDF5) file: ``[key]`` gives numpy arrays in MATLAB's orientation; cells give
    object arrays of (transposed) element arrays."""

    def __init__(self, path: Path):
        import h5py

        self.file = h5py.File(path, "r")

    def keys(self):
        return [k for k in self.file.keys() if not k.startswith("#")]

    def __contains__(self, key):
        return key in self.keys()

    def __getitem__(self, key):
        import h5py

        data = self.file[key][()]
        if data.dtype == object:  # a cell: references to datasets
            out = np.empty(data.shape, dtype=object)
            for i, ref in enumerate(data.flat):
                out.flat[i] = np.asarray(self.file[ref][()]).T
            return out.T
        if isinstance(self.file[key], h5py.Group):
            raise DataError(f"{key!r} is a MATLAB struct, not an array")
        return np.asarray(data).T


def open_arrays(path: str | os.PathLike) -> Any:
    """A mapping ``key -> array`` for a ``.mat`` (v5 or v7.3), ``.npz`` or ``.pt`` file, or the
    array itself for ``.npy``. Raises :class:`DataError` for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"feature file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".mat":
            import h5py

            if h5py.is_hdf5(path):
                return _Mat73(path)
            import scipy.io

            return {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
        if suffix == ".npz":
            return dict(np.load(path, allow_pickle=False))
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".pt":
            return torch.load(path, map_location="cpu", weights_only=True)
    except DataError:
        raise
    except Exception as e:  # corrupt or foreign files: say which file
        raise DataError(f"cannot read feature file {path}: {type(e).__name__}: {e}") from e
    raise DataError(f"unsupported feature file {path}: use .mat, .npz, .npy or .pt")


def _pick(arrays: Any, keys: str | Sequence[str], what: str, path: Path, index: int | None = None) -> np.ndarray:
    """The array under the first of ``keys`` present (``index``: element ``index`` of a 1 x N cell)."""
    candidates = [keys] if isinstance(keys, str) else list(keys)
    available = sorted(arrays.keys()) if hasattr(arrays, "keys") else []
    for key in candidates:
        if key in arrays:
            value = arrays[key]
            if index is not None:
                cells = np.asarray(value, dtype=object)
                if not 0 <= index < cells.size:
                    raise DataError(f"split index {index} out of range: {path} {key!r} holds {cells.size} splits")
                value = cells.flat[index]
            if isinstance(value, torch.Tensor):
                value = value.numpy()
            return np.asarray(value)
    raise DataError(f"{path} has no {what} under {candidates}; its keys are {available}")


def to_matrix(features: np.ndarray, path: Path) -> torch.Tensor:
    x = np.asarray(features)
    if x.ndim != 2:
        raise DataError(f"{path}: features must be a 2-d (samples x dims) array, got shape {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def l2_normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """``x_i / ||x_i||_2`` per row (zero rows stay zero, as ``sklearn.preprocessing.normalize``)."""
    norm = x.norm(dim=1, keepdim=True)
    return x / torch.where(norm > 0, norm, torch.ones_like(norm))


def is_text(labels: np.ndarray) -> bool:
    """True for labels given as class names (strings; MATLAB cell arrays of strings)."""
    return np.asarray(labels).dtype.kind in "USO"


def text_labels(raw: np.ndarray) -> np.ndarray:
    """Class-name labels as a flat array of ``str`` (MATLAB cellstr elements unwrapped, bytes decoded)."""
    def name(v):
        v = np.asarray(v).squeeze()
        v = v.item() if v.ndim == 0 else "".join(map(str, v.reshape(-1)))
        return v.decode() if isinstance(v, bytes) else str(v).strip()
    return np.array([name(v) for v in np.asarray(raw, dtype=object).reshape(-1)], dtype=str)


def encode_labels(raw: np.ndarray, n: int, label_base: int, path: Path,
                  class_names: Sequence[str] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Labels ``(n,)`` in ``0..C-1`` (sorted label values) and the class names of those values.

    Labels are integers (``label_base`` is the first class), or class names (strings): each name
    becomes its index in ``class_names`` (default: the names present, sorted) and keeps its name."""
    y = np.asarray(raw).reshape(-1)
    if y.size != n:
        raise DataError(f"{path}: {n} feature rows but {y.size} labels (labels must be a vector, n x 1 or 1 x n)")
    if is_text(y):
        y = text_labels(y)
        class_names = list(class_names) if class_names is not None else sorted(set(y.tolist()))
        index = {str(c): i for i, c in enumerate(class_names)}
        unknown = sorted(set(y.tolist()) - set(index))
        if unknown:
            raise DataError(f"{path}: label name(s) {unknown[:5]} are not in data.class_names {list(class_names)}")
        y, label_base = np.array([index[v] for v in y.tolist()], dtype=np.int64), 0
    if y.size and not np.all(np.equal(np.mod(y, 1), 0)):
        raise DataError(f"{path}: labels must be integers (0..C-1 or 1..C) or class names (strings), not {y.dtype} values "
                        f"such as {y[np.mod(y, 1) != 0][0]}")
    y = y.astype(np.int64) - label_base
    if y.size and y.min() < 0:
        raise DataError(f"{path}: label {y.min() + label_base} is below label_base={label_base} "
                        "(use label_base=0 for 0-based labels)")
    values = np.unique(y)
    if class_names is not None:
        if values.size and values.max() >= len(class_names):
            raise DataError(f"{path}: label {values.max() + label_base} has no name in class_names ({len(class_names)} names)")
        names = [str(class_names[v]) for v in values]
    else:
        names = [str(v + label_base) for v in values]
    return torch.from_numpy(np.searchsorted(values, y)), names


def _eval_input(x: torch.Tensor, raw: np.ndarray, label_base: int, l2_normalize: bool, classes: list[str]) -> dict:
    """The domain's ``eval_input``: its width, normalisation and label numbering (as :func:`encode_labels`;
    class-name labels by their names)."""
    if is_text(raw):
        return feature_description(x.shape[1], l2_normalize, 0, [], label_names=classes)
    values = np.unique(np.asarray(raw).reshape(-1).astype(np.int64) - label_base)
    return feature_description(x.shape[1], l2_normalize, label_base, values.tolist())


def require_finite(x: torch.Tensor, domain: str, path: Path) -> None:
    """Refuse features holding NaN or Inf, naming the domain, the file and how many rows: a single
    such value makes every loss and gradient non-finite, and training would go on silently."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        rows = bad.any(1).nonzero().flatten()
        kinds = " and ".join(k for k, m in (("NaN", torch.isnan(x)), ("Inf", torch.isinf(x))) if bool(m.any()))
        raise DataError(f"domain {domain!r} ({path}): {len(rows)} of {len(x)} feature rows hold {kinds} values "
                        f"({int(bad.sum())} value(s); first rows {rows[:5].tolist()}); remove those rows, or replace the "
                        "values (e.g. numpy.nan_to_num, or the column mean) before training")


def _resolve(path: str | os.PathLike, root: str | os.PathLike | None) -> Path:
    p = Path(path)
    return p if p.is_absolute() or root is None else Path(root) / p


def _read_splits(arrays: Any, key: str, base: int, n: int, path: Path) -> dict[int, torch.Tensor]:
    idx = _pick(arrays, key, "pre-drawn splits", path)
    if idx.ndim != 2:
        raise DataError(f"{path}: splits {key!r} must be a (labelled samples x splits) matrix, got shape {idx.shape}")
    idx = idx.astype(np.int64) - base
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise DataError(f"{path}: splits {key!r} hold indices outside 0..{n - 1} after split_base={base} "
                        f"(range {idx.min() + base}..{idx.max() + base})")
    return {i: torch.from_numpy(idx[:, i].copy()) for i in range(idx.shape[1])}


def feature_domain(name: str, path: str, root: str | None = None, features_key: str | Sequence[str] = FEATURE_KEYS,
                   labels_key: str | Sequence[str] = LABEL_KEYS, labels_path: str | None = None, label_base: int = 0,
                   l2_normalize: bool = True, class_names: Sequence[str] | None = None, splits_key: str | None = None,
                   split_base: int = 1, **_: Any) -> Domain:
    """A domain from one feature file (see the module docstring). ``path`` is relative to ``root``
    unless absolute; further keyword arguments of the DataModule's ``domain_args`` are ignored."""
    file = _resolve(path, root)
    arrays = open_arrays(file)
    if isinstance(arrays, np.ndarray) or isinstance(arrays, torch.Tensor):
        x = to_matrix(np.asarray(arrays), file)
        if labels_path is None:
            raise DataError(f"{file} holds only a feature array: give labels_path for its labels")
    else:
        x = to_matrix(_pick(arrays, features_key, "features", file), file)
    if labels_path is not None:
        label_file = _resolve(labels_path, root)
        label_arrays = open_arrays(label_file)
        raw = label_arrays if isinstance(label_arrays, (np.ndarray, torch.Tensor)) else _pick(label_arrays, labels_key, "labels", label_file)
        raw = raw.numpy() if isinstance(raw, torch.Tensor) else raw
    else:
        raw = _pick(arrays, labels_key, "labels", file)
    if len(x) == 0:
        raise DataError(f"domain {name!r} is empty: {file} has no samples")
    y, classes = encode_labels(raw, len(x), label_base, file, class_names)
    require_finite(x, name, file)
    if l2_normalize:
        x = l2_normalize_rows(x)
    info: dict[str, Any] = {"dim": x.shape[1], "path": str(file)}
    if splits_key is not None and not isinstance(arrays, np.ndarray):
        info["splits"] = _read_splits(arrays, splits_key, split_base, len(x), file)
    elif splits_key is not None:
        raise DataError(f"{file} is a bare array and cannot hold splits {splits_key!r}")
    return Domain(name=name, train=FeatureTensors(x, y), classes=classes, info=info,
                  eval_input=_eval_input(x, raw, label_base, l2_normalize, classes))


def shda_source_domain(name: str, path: str, root: str | None = None, label_base: int = 1, l2_normalize: bool = True,
                       class_names: Sequence[str] | None = None, **_: Any) -> Domain:
    """The SHDA source file: ``source_features`` (n x d) and ``source_labels``."""
    return feature_domain(name, path, root, features_key="source_features", labels_key="source_labels",
                          label_base=label_base, l2_normalize=l2_normalize, class_names=class_names)


def shda_target_domain(name: str, path: str, split: int = 0, root: str | None = None, label_base: int = 1,
                       l2_normalize: bool = True, class_names: Sequence[str] | None = None, **_: Any) -> Domain:
    """The SHDA target file, split ``split`` (0-based): ``[training_features[0, split];
    testing_features[0, split]]`` with the training rows as the labelled target."""
    file = _resolve(path, root)
    arrays = open_arrays(file)
    if isinstance(arrays, np.ndarray):
        raise DataError(f"{file} is a bare array, not an SHDA target file")
    parts = []
    for part in ("training", "testing"):
        x = to_matrix(_pick(arrays, f"{part}_features", f"{part} features", file, index=split), file)
        parts.append((x, _pick(arrays, f"{part}_labels", f"{part} labels", file, index=split)))
    (x_l, y_l), (x_u, y_u) = parts
    if x_l.shape[1] != x_u.shape[1]:
        raise DataError(f"{file} split {split}: training features are {x_l.shape[1]}-d but testing features {x_u.shape[1]}-d")
    if len(x_l) == 0 or len(x_u) == 0:
        raise DataError(f"domain {name!r} split {split}: {'training' if len(x_l) == 0 else 'testing'} part is empty in {file}")
    x = torch.cat([x_l, x_u])
    raw = np.concatenate([np.asarray(y_l).reshape(-1), np.asarray(y_u).reshape(-1)])
    y, classes = encode_labels(raw, len(x), label_base, file, class_names)
    require_finite(x, name, file)
    if l2_normalize:
        x = l2_normalize_rows(x)
    info = {"dim": x.shape[1], "path": str(file), "splits": {split: torch.arange(len(x_l))}}
    return Domain(name=name, train=FeatureTensors(x, y), classes=classes, info=info,
                  eval_input=_eval_input(x, raw, label_base, l2_normalize, classes))
