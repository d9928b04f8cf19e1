"""Shared fixtures and helpers: Hydra composition of run.py's config, small real data from ../shared/data
(and small files in its layouts, written here), the tiny CLIP of the CLIP and RST tests, and one
intra-op thread for tests on tiny tensors."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_da.data import FullBatchDataModule, feature_domain
from lightning_da.train import compose_config


ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = Path(os.environ.get("LIGHTNING_DA_SHARED_DATA", ROOT.parent / "shared" / "data"))
OFFICE_IMAGES = SHARED_DATA / "office_caltech10" / "images"
FEATURES = SHARED_DATA / "office_caltech10" / "features"


# quick-run overrides: a few steps, small evaluation, no progress bar
QUICK = ["debug=quick"]  # conf/debug/quick.yaml: a few steps through everything, at the smallest sizes


# a few steps of an experiment config (2 batches of 4), on images at 64 px read in the test process
FEW = [*QUICK, "data.iters_per_epoch=2", "data.batch_size=4", "trainer.max_epochs=1"]
SMALL_IMAGES = ["data.domain_args.transform.resize=72", "data.domain_args.transform.crop=64", "data.num_workers=0",
                "data.pin_memory=false", "data.persistent_workers=false"]


def snapshot(model) -> dict:
    """A copy of every parameter, to see later which ones a step changed."""
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(model, before: dict) -> set[str]:
    """Top-level module names whose parameters differ from ``snapshot``."""
    return {n.split(".")[0] for n, p in model.named_parameters() if not torch.equal(p, before[n])}


def save_features(path: Path, per_class: int, dim: int, classes: int = 4, seed: int = 0, labels=None):
    """A feature file of ``classes`` classes (``per_class`` rows each, class index + N(0, 1) noise in
    ``dim`` columns); ``labels``: what to store per class instead of its index (e.g. names)."""
    import numpy as np

    y = np.repeat(np.arange(classes), per_class)
    x = np.random.default_rng(seed).normal(size=(len(y), dim)) + y[:, None]
    np.savez(path, features=x, labels=y if labels is None else np.asarray(labels)[y])
    return x, y


def needs_shared(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} not available")


def make_cfg(tmp_path: Path, overrides: list[str]):
    """Compose conf/train.yaml as run.py would, with outputs under tmp_path."""
    return compose_config(overrides, tmp_path, str(CONF))


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only contend (on a loaded 2-core machine an MCD / CGDM step test
    took 23 s with two threads and 0.6 s with one; the tiny CLIPs' two threads on two cores with one
    taken spin-wait, 40x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_clip():
    """A small random-weight CLIP image encoder (RN50 layout, 64 px) built through the open_clip calls."""
    from lightning_da.models.clip import CLIPImageEncoder
    from step_replay.clip import TINY_RN

    torch.manual_seed(0)
    return CLIPImageEncoder("RN50", pretrained=None, model_cfg=TINY_RN)


# ---------------------------------------------------------------------------------------------- images
@pytest.fixture
def office_subset(tmp_path_factory) -> Path:
    """A small ImageFolder copy of Office-Caltech10 (amazon and webcam, 3 images per class, symlinked)."""
    if not OFFICE_IMAGES.exists():
        pytest.skip(f"{OFFICE_IMAGES} not available")
    root = tmp_path_factory.mktemp("office_caltech10")
    for domain in ("amazon", "webcam"):
        for cls in sorted(os.listdir(OFFICE_IMAGES / domain)):
            (root / domain / cls).mkdir(parents=True)
            for name in sorted(os.listdir(OFFICE_IMAGES / domain / cls))[:3]:
                (root / domain / cls / name).symlink_to(OFFICE_IMAGES / domain / cls / name)
    return root


def link_images(src: Path, dst: Path, per_class: int = 2) -> list[tuple[str, int]]:
    samples = []
    for label, cls in enumerate(sorted(os.listdir(src))):
        (dst / cls).mkdir(parents=True, exist_ok=True)
        for name in sorted(os.listdir(src / cls))[:per_class]:
            (dst / cls / name).symlink_to(src / cls / name)
            samples.append((f"{cls}/{name}", label))
    return samples


@pytest.fixture(scope="session")
def standins(tmp_path_factory):
    """Tiny copies of Office-31, Office-Home, VisDA-2017, DomainNet and ImageCLEF in their layouts (10
    classes, 2 images each, symlinked from Office-Caltech10)."""
    if not OFFICE_IMAGES.exists():
        pytest.skip(f"{OFFICE_IMAGES} not available")
    root = tmp_path_factory.mktemp("standins")
    amazon, webcam = OFFICE_IMAGES / "amazon", OFFICE_IMAGES / "webcam"
    link_images(amazon, root / "office31" / "amazon" / "images")
    link_images(webcam, root / "office31" / "webcam" / "images")
    link_images(amazon, root / "office_home" / "Product")
    link_images(webcam, root / "office_home" / "Clipart")
    link_images(amazon, root / "visda2017" / "train")
    link_images(webcam, root / "visda2017" / "validation")
    link_images(amazon, root / "domainnet" / "real")
    link_images(webcam, root / "domainnet" / "sketch")
    (root / "image_CLEF" / "list").mkdir(parents=True)
    for dom, src in (("i", amazon), ("p", webcam)):
        samples = link_images(src, root / "image_CLEF" / dom)
        (root / "image_CLEF" / "list" / f"{dom}List.txt").write_text("".join(f"{dom}/{p} {y}\n" for p, y in samples))
    return root


# ---------------------------------------------------------------------------------------------- feature files
def write_npz(path, n=40, d=6, classes=4, label_base=0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.arange(n) % classes + label_base
    np.savez(path, features=x, labels=y)
    return x, y


def feature_datamodule(tmp_path, **kwargs):
    """A FullBatchDataModule on two written npz domains (5-d source, 7-d target, 40 rows, 4 classes)."""
    write_npz(tmp_path / "s.npz", d=5)
    write_npz(tmp_path / "t.npz", d=7, seed=1)
    domains = {"s": partial(feature_domain, name="s", path="s.npz"), "t": partial(feature_domain, name="t", path="t.npz")}
    return FullBatchDataModule(domains, "s", "t", root=str(tmp_path), **kwargs)


# ---------------------------------------------------------------------------------------------- multi-modal lists
TEXTS = {0: ["a black backpack with two straps", "good bag for school", "the zipper broke after a week"],
         1: ["a mountain bike on a white background", "two wheels and a frame", "nice ride"]}


@pytest.fixture(scope="module")
def mm_root(tmp_path_factory):
    """Three domains (the amazon, webcam, dslr photos of backpacks and bikes) in M2CAN's JSON-list
    format, 6 samples per class, 1 or 2 images each, texts written here."""
    if not OFFICE_IMAGES.exists():
        pytest.skip(f"{OFFICE_IMAGES} not available")
    root = tmp_path_factory.mktemp("m2can")
    for dom in ("amazon", "webcam", "dslr"):
        entries = []
        for label, cls in enumerate(("backpack", "bike")):
            files = sorted(os.listdir(OFFICE_IMAGES / dom / cls))[:7]
            for i in range(6):
                imgs = [f"{cls}/{files[i]}"] + ([f"{cls}/{files[i + 1]}"] if i % 2 else [])
                entries.append({"text": TEXTS[label][i % 3:i % 3 + 2], "image": imgs, "label": label})
        (root / f"{dom}.json").write_text(json.dumps(entries))
    return root


def mm_domains(root, **kw):
    from lightning_da.data.multimodal import multimodal_domain

    return {d: partial(multimodal_domain, name=d, train_list=str(root / f"{d}.json"), image_root=str(OFFICE_IMAGES / d),
                       classes=["backpack", "bike"], max_images=2, resize=40, crop=32, join="space", **kw)
            for d in ("amazon", "webcam", "dslr")}
