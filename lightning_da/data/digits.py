"""Digit domains: MNIST, USPS, SVHN (torchvision roots), MNIST-M (original layout) and the bundled subset.

Every digit domain is decoded once into a uint8 tensor resized to ``image_size`` with ``channels``
channels (grey is repeated to 3; RGB is averaged to 1), then served from memory, so an epoch
costs no image decoding. ``resize`` picks how: ``bilinear`` (default; one antialiased bilinear
``F.interpolate`` over the whole array) or ``pil_bicubic`` (each image through PIL's
``Image.resize`` with its default bicubic filter, as TLlib's ``ResizeImage`` does, e.g. USPS
16 -> 28 px in its digits scripts). Sizes above ``STORE_MAX`` (CLIP's 224 px) are stored at the native size
and resized per item instead (MNIST at 224 px would need 9 GB). Normalisation is
``(x - mean) / std`` (default 0.5 / 0.5).

Every builder also takes ``resize``, ``mean``/``std``, ``train_crop_scale`` (a ``RandomResizedCrop(image_size,
scale)`` training augmentation, CMKD's digits setting) and ``strong_view`` (arguments of
:func:`~lightning_da.data.views.strong_tensor_augment`, for ``data.strong_target_view``).
"""

from __future__ import annotations

import os
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F

from lightning_da.data.domain import DataError, Domain, TensorImages
from lightning_da.data.preprocess import DigitImage, image_description
from lightning_da.data.views import strong_tensor_augment

DIGIT_CLASSES = [str(i) for i in range(10)]
#: images larger than this are stored at their native size and resized per item
STORE_MAX = 64
RESIZE_MODES = ("bilinear", "pil_bicubic")


def _resize(x: torch.Tensor, image_size: int, mode: str) -> torch.Tensor:
    """``(N, C, H, W)`` uint8 images resized to ``image_size`` square (``RESIZE_MODES``)."""
    if mode == "bilinear":
        x = F.interpolate(x.float(), size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        return x.round().clamp(0, 255).to(torch.uint8)
    from PIL import Image

    out = [np.asarray(Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).resize((image_size, image_size), Image.Resampling.BICUBIC))
           for img in x.permute(0, 2, 3, 1).numpy()]   # = PIL's default filter for L / RGB images
    out = torch.from_numpy(np.stack(out))
    return (out.unsqueeze(1) if out.ndim == 3 else out.permute(0, 3, 1, 2)).contiguous()


def _prepare(images, image_size: int, channels: int, resize: str = "bilinear") -> torch.Tensor:
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown digits resize {resize!r}; choose one of {RESIZE_MODES}")
    x = torch.as_tensor(np.asarray(images))
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] != channels:
        x = x.expand(-1, 3, -1, -1) if channels == 3 else x.float().mean(1, keepdim=True).round().to(torch.uint8)
    if image_size <= STORE_MAX and (x.shape[-1] != image_size or x.shape[-2] != image_size):
        x = _resize(x, image_size, resize)
    return x.contiguous()


def _digits_domain(name, train, test, image_size, channels, mean=(0.5,), std=(0.5,), train_crop_scale=None,
                   strong_view: dict | None = None, resize: str = "bilinear", **info) -> Domain:
    def ds(split):
        if split is None:
            return None
        images, labels = split
        return TensorImages(_prepare(images, image_size, channels, resize), torch.as_tensor(np.asarray(labels)).long(),
                            mean=mean, std=std, size=image_size)

    train_eval = ds(train)
    augment = None
    if train_crop_scale is not None:
        from torchvision.transforms import v2

        augment = v2.RandomResizedCrop(image_size, scale=tuple(train_crop_scale), antialias=True)
    train_set = train_eval.with_views(augment=augment)
    strong_tf = strong_tensor_augment(**{"image_size": image_size, "mean": mean, **(strong_view or {})})
    strong = train_eval.with_views(augment=augment, strong=strong_tf)
    eval_input = image_description("as_stored", DigitImage(image_size, channels, mean, std, resize))
    return Domain(name, train_set, DIGIT_CLASSES, ds(test), info, train_eval=train_eval, train_strong=strong,
                  eval_input=eval_input)


def _views(options: dict) -> dict:
    """The resizing and per-item view options among a builder's extra keyword arguments (others are ignored)."""
    return {k: options[k] for k in ("resize", "mean", "std", "train_crop_scale", "strong_view") if k in options}


def _require(path: str, layout: str) -> None:
    if not os.path.exists(path):
        raise DataError(f"data path {os.path.abspath(path)!r} does not exist; expected {layout}. "
                        "Set data.root=<folder> (or paths.data_dir / the LIGHTNING_DA_DATA variable), or "
                        "data.domain_args.download=true where the dataset supports it.")


def mnist(root: str, image_size: int = 28, channels: int = 1, download: bool = False, **options) -> Domain:
    """MNIST (60k train / 10k test) read by ``torchvision.datasets.MNIST`` from ``root/MNIST/raw``."""
    from torchvision.datasets import MNIST

    if not download:
        _require(os.path.join(root, "MNIST", "raw"), "the torchvision layout <root>/MNIST/raw/{train,t10k}-*-ubyte")
    tr, te = MNIST(root, train=True, download=download), MNIST(root, train=False, download=download)
    return _digits_domain("mnist", (tr.data, tr.targets), (te.data, te.targets), image_size, channels, **_views(options))


def usps(root: str, image_size: int = 28, channels: int = 1, download: bool = False, **options) -> Domain:
    """USPS (7,291 train / 2,007 test, 16x16) read by ``torchvision.datasets.USPS`` from ``root/usps{,.t}.bz2``."""
    from torchvision.datasets import USPS

    if not download:
        _require(os.path.join(root, "usps.bz2"), "the torchvision layout <root>/usps.bz2 and <root>/usps.t.bz2")
    tr, te = USPS(root, train=True, download=download), USPS(root, train=False, download=download)
    return _digits_domain("usps", (tr.data, tr.targets), (te.data, te.targets), image_size, channels, **_views(options))


def svhn(root: str, image_size: int = 32, channels: int = 3, download: bool = False, **options) -> Domain:
    """SVHN (73,257 train / 26,032 test) read by ``torchvision.datasets.SVHN`` from ``root/{train,test}_32x32.mat``."""
    from torchvision.datasets import SVHN

    if not download:
        _require(os.path.join(root, "train_32x32.mat"), "the torchvision layout <root>/{train,test}_32x32.mat")
    tr, te = SVHN(root, split="train", download=download), SVHN(root, split="test", download=download)
    return _digits_domain("svhn", (tr.data, tr.labels), (te.data, te.labels), image_size, channels, **_views(options))


def mnist_m(root: str, image_size: int = 32, channels: int = 3, **options) -> Domain:
    """MNIST-M in its original layout: ``root/mnist_m/mnist_m_{train,test}/*.png`` plus
    ``mnist_m_{train,test}_labels.txt`` (``filename label`` lines). If only the test split exists
    (as in ../shared/data), it is the (transductive) train split and there is no test split."""
    from PIL import Image

    base = os.path.join(root, "mnist_m")
    layout = "<root>/mnist_m/mnist_m_test/*.png with <root>/mnist_m/mnist_m_test_labels.txt (and optionally the train split)"

    def read(split):
        folder, labels_file = os.path.join(base, f"mnist_m_{split}"), os.path.join(base, f"mnist_m_{split}_labels.txt")
        if not os.path.isfile(labels_file):
            return None
        names, labels = [], []
        with open(labels_file) as fh:
            for line_no, line in enumerate(fh, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 2:
                    raise DataError(f"{labels_file}:{line_no}: expected 'filename label', got {line.strip()!r}")
                names.append(parts[0])
                labels.append(int(parts[1]))
        images = []
        for n in names:
            path = os.path.join(folder, n)
            try:
                with Image.open(path) as im:
                    images.append(np.asarray(im.convert("RGB")))
            except (OSError, ValueError) as err:
                raise DataError(f"cannot read MNIST-M image {path}: {err}") from err
        return np.stack(images), labels

    _require(base, layout)
    train, test = read("train"), read("test")
    if train is None and test is None:
        raise DataError(f"no MNIST-M split found under {base}; expected {layout}")
    if train is None:
        return _digits_domain("mnist_m", test, None, image_size, channels, transductive=True, **_views(options))
    return _digits_domain("mnist_m", train, test, image_size, channels, **_views(options))


BUNDLE = "digits_bundle.npz"


def bundled(name: str, image_size: int = 28, channels: int = 1, **options) -> Domain:
    """The compact real-digits bundle shipped inside the package (offline default).

    ``mnist``: 10,000 MNIST train images (the first 1,000 of each class) and 2,000 MNIST test
    images (the first 200 of each class); ``usps``: all of USPS (7,291 train / 2,007 test).
    """
    if name not in ("mnist", "usps"):
        raise DataError(f"the bundled digits hold 'mnist' and 'usps', not {name!r}")
    with resources.files("lightning_da.data").joinpath("bundled", BUNDLE).open("rb") as fh:
        z = np.load(fh)
        train = (z[f"{name}_train_x"], z[f"{name}_train_y"])
        test = (z[f"{name}_test_x"], z[f"{name}_test_y"])
    return _digits_domain(f"{name}_bundled", train, test, image_size, channels, **_views(options))
