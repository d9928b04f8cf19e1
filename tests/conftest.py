"""Shared fixtures: Hydra composition of run.py's config, and small real data from ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lightning_da.train import compose_config

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED_DATA = Path(os.environ.get("LIGHTNING_DA_SHARED_DATA", ROOT.parent / "shared" / "data"))
OFFICE_IMAGES = SHARED_DATA / "office_caltech10" / "images"

# quick-run overrides: a few steps, small evaluation, no progress bar
QUICK = ["trainer.max_epochs=1", "data.iters_per_epoch=4", "data.batch_size=16", "trainer.enable_progress_bar=false",
         "+trainer.limit_val_batches=2", "+trainer.limit_test_batches=2", "data.eval_batch_size=64",
         "trainer.log_every_n_steps=1", "callbacks.validators.max_samples=300", "callbacks.visuals.max_per_domain=40",
         "callbacks.visuals.iters=250"]


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
