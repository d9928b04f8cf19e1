"""One pass of a model in evaluation mode over a dataset, shared by pseudo labels, validators, visuals and methods.

* :func:`eval_mode`: a context that puts a module in evaluation mode without gradients and restores
  every submodule's own mode after (frozen layers stay frozen).
* :func:`predict_dataset`: one such pass of a callable over a loader, outputs concatenated.

Inputs move to the device with Lightning's ``move_data_to_device`` (tensors, dicts, lists, tuples).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from lightning.pytorch.utilities import move_data_to_device
from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``with eval_mode(model): ...`` runs in ``model.eval()`` under ``torch.no_grad()``, then gives
    each submodule back the mode it had."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        for m, mode in modes:
            m.training = mode


def _split_batch(batch: Any, second: bool) -> tuple[Any, Any]:
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if second:
        raise ValueError("predict_dataset(indexed=True): the loader must yield (x, idx) or (x, y) batches, "
                         "not bare inputs (pseudo labels need each sample's index in the target train set)")
    return batch, None


@torch.no_grad()
def predict_dataset(forward: Callable[[Any], Sequence[torch.Tensor]], loader: Iterable, device: torch.device | str,
                    indexed: bool = False) -> tuple[torch.Tensor, ...]:
    """Run ``forward(x) -> (out_1, ..., out_k)`` over every batch of ``loader`` without gradients and
    return ``(out_1, ..., out_k, second)``, each concatenated over the batches (on ``device``).

    Batches are ``(x, idx)`` or ``(x, y)`` (or a bare ``x``); ``x`` may be a tensor or a collection of
    tensors. With ``indexed=True``, ``second`` is each batch's second element (target batches: the
    samples' dataset indices; labelled batches: the labels; a bare batch raises); otherwise it is
    the samples' positions in the loader's order, ``0..N-1``. The caller chooses the model's mode
    (:func:`eval_mode`).
    """
    outputs: list[list[torch.Tensor]] = []
    seconds, seen = [], 0
    for batch in loader:
        x, second = _split_batch(batch, indexed)
        out = forward(move_data_to_device(x, device))
        rows = {len(o) for o in out}
        if len(rows) != 1:
            raise ValueError(f"forward returned outputs with different numbers of rows: {[len(o) for o in out]}")
        n = rows.pop()
        second = torch.arange(seen, seen + n) if not indexed or second is None else second
        second = torch.as_tensor(second).to(device).long().reshape(-1)
        if len(second) != n:
            raise ValueError(f"a batch has {len(second)} indices but forward returned {n} rows")
        seen += n
        outputs.append(list(out))
        seconds.append(second)
    if not outputs:
        raise ValueError("the loader yielded no batches")
    return (*(torch.cat(parts) for parts in zip(*outputs)), torch.cat(seconds))
