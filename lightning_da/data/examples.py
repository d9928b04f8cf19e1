"""Write a tiny "own data" example from the bundled real digits, to try ``data=image_folder`` and
``data=features`` on (README "Your own data"; the tests build the same):

    python -m lightning_da.data.examples /tmp/my_data

* ``<root>/mnist/<class>/*.png``: MNIST as one ImageFolder (4 images per class);
* ``<root>/usps/{train,test}/<class>/*.png``: USPS with a held-out test split (4 / 2 per class);
* ``<root>/features/{source,target}.npz``: 12-d source and 7-d target feature matrices of 4 classes
  with MATLAB-style 1-based labels (keys ``features`` / ``labels``; synthetic class means plus noise).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from lightning_da.data.digits import bundled


def _dump(dataset, root: Path, per_class: int) -> None:
    counts: dict[int, int] = {}
    for i in range(len(dataset)):
        y = int(dataset.labels[i])
        if counts.get(y, 0) < per_class:
            counts[y] = counts.get(y, 0) + 1
            (root / str(y)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(dataset.images[i][0].numpy()).save(root / str(y) / f"{i}.png")


def write_examples(root: str | Path) -> Path:
    root = Path(root)
    _dump(bundled(root=None, name="mnist").train, root / "mnist", 4)
    usps = bundled(root=None, name="usps")
    _dump(usps.train, root / "usps" / "train", 4)
    _dump(usps.test, root / "usps" / "test", 2)
    rng = np.random.default_rng(0)
    ys, yt = np.repeat(np.arange(1, 5), 10), np.repeat(np.arange(1, 5), 8)
    (root / "features").mkdir(parents=True, exist_ok=True)
    np.savez(root / "features" / "source.npz", features=rng.normal(size=(40, 12)) + ys[:, None], labels=ys)
    np.savez(root / "features" / "target.npz", features=rng.normal(size=(32, 7)) + yt[:, None], labels=yt)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root")
    print(f"wrote {write_examples(ap.parse_args().root)}")


if __name__ == "__main__":
    main()
