"""Rebuild the bundled digits (``lightning_da/data/bundled/digits_bundle.npz``) from full copies.

    python -m lightning_da.data.make_bundle --root ../shared/data

MNIST: the first 1,000 train images of each class and the first 200 test images of each class;
USPS: all of it (7,291 train / 2,007 test, 16x16). uint8 arrays, ``np.savez_compressed``.
"""

from __future__ import annotations

import argparse
import os

import numpy as np


def first_per_class(labels: np.ndarray, k: int) -> np.ndarray:
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:k] for c in range(10)]))


def main() -> None:
    from torchvision.datasets import MNIST, USPS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="folder holding MNIST/raw and usps{,.t}.bz2")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "bundled", "digits_bundle.npz"))
    args = ap.parse_args()
    arrays = {}
    for split, train, k in (("train", True, 1000), ("test", False, 200)):
        m = MNIST(args.root, train=train)
        y = m.targets.numpy()
        keep = first_per_class(y, k)
        arrays[f"mnist_{split}_x"], arrays[f"mnist_{split}_y"] = m.data.numpy()[keep], y[keep].astype(np.uint8)
        u = USPS(args.root, train=train)
        arrays[f"usps_{split}_x"], arrays[f"usps_{split}_y"] = np.asarray(u.data, np.uint8), np.asarray(u.targets, np.uint8)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB): " +
          ", ".join(f"{k} {v.shape}" for k, v in arrays.items() if k.endswith("_x")))


if __name__ == "__main__":
    main()
