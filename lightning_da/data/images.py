"""Image domains in ImageFolder layout (``root/<class>/<image>``) or image-list files (``path label``).

Class lists are checked across domains by the DataModule. Paths are checked when the domain is
built (a wrong path names the path and the layout it expected); an unreadable image raises an
error naming the file when it is loaded, or, with ``verify_images``, every image is opened when the
domain is built and all unreadable files are listed in one error.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from lightning_da.data.domain import DataError, Domain
from lightning_da.data.preprocess import image_description
from lightning_da.data.views import strong_image_transform

log = logging.getLogger(__name__)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")


def image_transforms(train: bool, resize: int = 256, crop: int = 224, mean: Sequence[float] = IMAGENET_MEAN,
                     std: Sequence[float] = IMAGENET_STD, hflip: bool = True, test_resize: int | None = None):
    """Train: ``Resize((r, r)) -> RandomCrop(c) -> RandomHorizontalFlip``; test: ``Resize((r', r')) ->
    CenterCrop(c)`` with ``r' = test_resize or r``; both then ``ToTensor -> Normalize(mean, std)``
    (the CDAN / RN / CGDM pipeline; CMKD tests with ``test_resize = crop``)."""
    if train:
        ops = [T.Resize((resize, resize)), T.RandomCrop(crop)] + ([T.RandomHorizontalFlip()] if hflip else [])
    else:
        ops = [T.Resize((test_resize or resize,) * 2), T.CenterCrop(crop)]
    return T.Compose(ops + [T.ToTensor(), T.Normalize(mean, std)])


def small_image_transforms(size: int, channels: int = 3, strong: bool = False):
    """Fixed-size inputs of digit networks (LeNet, DTN): ``Resize((size, size))`` [-> grey]
    [-> RandAugment(2, 10) for the strong view] -> ``ToTensor -> Normalize(0.5, 0.5)``, the same
    for training and testing (the digit protocol has no crop or flip)."""
    ops = [T.Resize((size, size))] + ([T.Grayscale(1)] if channels == 1 else []) + ([T.RandAugment(2, 10)] if strong else [])
    return T.Compose(ops + [T.ToTensor(), T.Normalize((0.5,) * channels, (0.5,) * channels)])


class ImageSamples(Dataset):
    """``(path, label)`` pairs loaded with PIL as RGB and transformed; with a ``strong`` transform an
    item is ``((transform(img), strong(img)), label)`` from one decoded image."""

    def __init__(self, samples: list[tuple[str, int]], transform=None, strong=None):
        self.samples, self.transform, self.strong = samples, transform, strong

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (OSError, ValueError) as err:
            raise DataError(f"cannot read image {path}: {err}; data.verify_images=true opens every image once before "
                            "training and lists all unreadable files in one error (other image configs: "
                            "+data.domain_args.verify_images=true)") from err
        weak = self.transform(img) if self.transform else img
        return (weak if self.strong is None else (weak, self.strong(img))), label


def verify_image_files(paths: Sequence[str], workers: int = 8) -> None:
    """Open and decode every image once (threads); raise one :class:`DataError` listing every file
    that cannot be read, instead of failing at the first one after training has started."""
    from concurrent.futures import ThreadPoolExecutor

    def problem(path: str) -> str | None:
        try:
            with Image.open(path) as im:
                im.load()
        except Exception as err:  # noqa: BLE001 - any decoder error makes the file unusable
            return f"{path}: {type(err).__name__}: {err}"
        return None

    with ThreadPoolExecutor(max(1, min(workers, os.cpu_count() or 1))) as pool:
        bad = [p for p in pool.map(problem, paths) if p]
    if bad:
        shown = "\n  ".join(bad[:50]) + (f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else "")
        raise DataError(f"{len(bad)} of {len(paths)} image(s) cannot be read:\n  {shown}\nremove or replace them "
                        "(or drop their lines from the image list)")
    log.info("verified %d images: all readable", len(paths))


def scan_image_folder(path: str, allow_empty_classes: bool = False) -> tuple[list[tuple[str, int]], list[str]]:
    """``(path, label)`` samples and class names of an ImageFolder. A class folder without images is
    an error naming it (its class would silently never be seen), or with ``allow_empty_classes`` a
    warning (a class legitimately absent from this domain keeps its label)."""
    layout = "ImageFolder layout <path>/<class name>/<image file>"
    if not os.path.isdir(path):
        raise DataError(f"image folder {os.path.abspath(path)!r} does not exist; expected {layout}")
    classes = sorted(e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {os.path.abspath(path)!r} has no class sub-folders; expected {layout}")
    samples, empty = [], []
    for label, cls in enumerate(classes):
        found = [(os.path.join(dirpath, f), label) for dirpath, _, files in sorted(os.walk(os.path.join(path, cls), followlinks=True))
                 for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            empty.append(os.path.join(os.path.abspath(path), cls))
        samples += found
    if not samples:
        raise DataError(f"image folder {os.path.abspath(path)!r} has class folders {classes[:5]}... but no images; expected {layout}")
    if empty and not allow_empty_classes:
        raise DataError(f"class folder(s) without images: {empty} (image files end in {', '.join(IMAGE_EXTENSIONS)}); "
                        "add images, remove the folder from every domain, or set data.domain_args.allow_empty_classes=true "
                        "if the class is legitimately absent from this domain")
    for folder in empty:
        log.warning("class folder %s has no images: its class is absent from this domain (allow_empty_classes)", folder)
    return samples, classes


def read_image_list(list_file: str, root: str = "") -> list[tuple[str, int]]:
    layout = "an image-list file of 'relative/or/absolute/path label' lines (0-based labels)"
    if not os.path.isfile(list_file):
        raise DataError(f"image list {os.path.abspath(list_file)!r} does not exist; expected {layout}")
    samples = []
    with open(list_file) as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            path, _, label = line.strip().rpartition(" ")
            if not path or not label.lstrip("-").isdigit():
                raise DataError(f"{list_file}:{line_no}: expected 'path label', got {line.strip()!r}")
            samples.append((path if os.path.isabs(path) else os.path.join(root, path), int(label)))
    if not samples:
        raise DataError(f"image list {list_file!r} is empty")
    missing = [p for p, _ in samples[:20] if not os.path.exists(p)]
    if missing:
        raise DataError(f"image list {list_file!r} points to missing files, e.g. {missing[0]!r}; "
                        "rewrite its path prefixes or set the list's root")
    return samples


def image_domain(name: str, root: str | None = None, path: str | None = None, list_file: str | None = None,
                 test_path: str | None = None, test_list_file: str | None = None, classes: Sequence[str] | None = None,
                 transform: dict | None = None, strong_view: dict | None = None, image_size: int | None = None,
                 channels: int | None = None, allow_empty_classes: bool = False, verify_images: bool = False, **_) -> Domain:
    """An image domain from an ImageFolder (``root/path``) or an image list (``root/list_file``).

    ``classes`` names the classes of an image list in label order (default ``"0".."K-1"``); for an
    ImageFolder it is checked against the folders. ``test_path`` / ``test_list_file`` give a
    held-out split; without one the domain is transductive (its train split is also evaluated).
    ``transform`` holds the arguments of :func:`image_transforms`; ``strong_view`` those of
    :func:`~lightning_da.data.views.strong_image_transform` beyond them (for ``data.strong_target_view``).
    With ``image_size`` (a fixed-size digit network's input, set by the DataModule from the
    backbone) and no ``transform``, images are resized to it (grey for ``channels=1``) as
    :func:`small_image_transforms`; a ``transform`` with 1 channel is refused (RGB pipeline).
    ``verify_images``: open every image once now and list all unreadable files in one error
    (:func:`verify_image_files`); otherwise an unreadable image is an error when it is first loaded.
    """
    root = root or ""
    transform = {k: v for k, v in (transform or {}).items() if v is not None} or None  # null values: defaults
    if transform is None and image_size is not None:
        train_tf = test_tf = small_image_transforms(image_size, channels or 3)
    else:
        if channels not in (None, 3):
            raise DataError(f"domain {name!r}: data.domain_args.channels={channels}, but the image transform "
                            f"{transform} makes 3-channel (RGB) inputs; drop the transform (the backbone's input size "
                            "is then used) or use a 3-channel backbone")
        transform = dict(transform or {})
        train_tf, test_tf = image_transforms(True, **transform), image_transforms(False, **transform)

    def load(folder, listing):
        if listing is not None:
            samples = read_image_list(os.path.join(root, listing), root)
            n = max(label for _, label in samples) + 1
            names = list(classes) if classes is not None else [str(i) for i in range(n)]
            if n > len(names) or min(label for _, label in samples) < 0:
                raise DataError(f"image list {listing!r} has labels outside 0..{len(names) - 1} ({len(names)} classes)")
            return samples, names
        if folder is None:
            raise DataError(f"domain {name!r}: give either path (ImageFolder) or list_file (image list)")
        samples, names = scan_image_folder(os.path.join(root, folder), allow_empty_classes)
        if classes is not None and list(classes) != names:
            raise DataError(f"domain {name!r}: folders {names} differ from the configured classes {list(classes)}")
        return samples, names

    train_samples, names = load(path, list_file)
    test = None
    if test_path is not None or test_list_file is not None:
        test_samples, test_names = load(test_path, test_list_file)
        if test_names != names:
            raise DataError(f"domain {name!r}: test classes {test_names} differ from train classes {names}")
        test = ImageSamples(test_samples, test_tf)
    if verify_images:
        verify_image_files([p for p, _ in train_samples] + ([p for p, _ in test.samples] if test is not None else []))
    train = ImageSamples(train_samples, train_tf)
    if transform is None:
        strong_tf = small_image_transforms(image_size, channels or 3, strong=True)
    else:
        strong_tf = strong_image_transform(**{**transform, **(strong_view or {})})
    strong = ImageSamples(train_samples, train.transform, strong_tf)
    return Domain(name, train, names, test, train_eval=ImageSamples(train_samples, test_tf), train_strong=strong,
                  eval_input=image_description("rgb", test_tf))
