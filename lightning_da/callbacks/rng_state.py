"""Carries the random-number generators' states in every checkpoint, so that a resumed run continues
the same random stream (dropout masks, augmentations, DataLoader seeds) as an uninterrupted one."""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from lightning_da.compat import collect_rng_states, set_rng_states


class RNGStateCheckpoint(L.Callback):
    """Saves the torch, CUDA, NumPy and Python RNG states when a checkpoint is written and restores them
    when the checkpoint is loaded to resume training. Lightning restores weights, optimisers and loop
    counters but not these, so without it a resumed run draws other dropout masks and shuffles and ends
    elsewhere (0.1 and 1.1 points on two 10-epoch MNIST -> MNIST-M runs).

    The states are set while Lightning restores the checkpoint, before the first DataLoader iterator of
    the resumed epoch draws its base seed: an uninterrupted run draws that seed at the same point of the
    stream (after the checkpoint was written). The sanity check runs under Lightning's isolated RNG.
    Under DDP the checkpoint holds rank 0's states; Lightning seeds every rank alike. A GPU checkpoint
    resumed without a GPU restores all but the CUDA states. Exact with ``num_workers=0`` or workers that
    are re-created each epoch; ``persistent_workers=true`` keeps each worker's own RNG across epochs, which
    a resumed run re-seeds, so worker-side augmentations differ after a resume there."""

    def state_dict(self) -> dict[str, Any]:
        states = collect_rng_states(include_cuda=torch.cuda.is_available())
        if "numpy" in states:  # (name, uint32 keys, pos, has_gauss, gauss): the keys as a tensor, to load with weights_only
            name, keys, *rest = states["numpy"]
            states["numpy"] = (name, torch.from_numpy(keys.astype(np.int64)), *rest)
        return {"rng": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = dict(state_dict.get("rng") or {})
        if not states:  # a checkpoint written before this callback existed
            return
        if "numpy" in states:
            name, keys, *rest = states["numpy"]
            states["numpy"] = (name, keys.numpy().astype(np.uint32), *rest)
        if not torch.cuda.is_available():
            states.pop("torch.cuda", None)
        set_rng_states(states)
