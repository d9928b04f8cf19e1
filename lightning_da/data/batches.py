"""Batch parsing: inputs that are tensors, lists of strings or dicts of them (multi-modal data), and
the ``(x, idx)`` target batches that carry sample indices."""

from __future__ import annotations

from typing import Any, Sequence

import torch


def cat_inputs(xs: Sequence[Any]) -> Any:
    """Concatenate batches along rows: tensors with ``torch.cat``, dicts key by key, lists of strings
    by list concatenation."""
    first = xs[0]
    if len(xs) == 1:
        return first
    if isinstance(first, torch.Tensor):
        return torch.cat(list(xs))
    if isinstance(first, dict):
        keys = set(first)
        for x in xs[1:]:
            if set(x) != keys:
                raise ValueError(f"cannot concatenate batches with different inputs: {sorted(keys)} vs {sorted(x)}")
        return {k: cat_inputs([x[k] for x in xs]) for k in first}
    if isinstance(first, (list, tuple)):
        return [v for x in xs for v in x]
    raise TypeError(f"cannot concatenate batch inputs of type {type(first).__name__}")


def input_len(x: Any) -> int:
    """Rows of a batch input (a tensor, a list, or a dict of them)."""
    if isinstance(x, dict):
        return input_len(next(iter(x.values())))
    return len(x)


NEEDS_INDEX = ("the target loader must yield (x, idx), with idx the sample's index in the target train set, "
               "so pseudo labels can be stored per sample")


def target_indices(batch: Any) -> tuple[Any, torch.Tensor]:
    """Split a target batch ``(x, idx)`` into ``x`` and ``idx``; a ValueError says what is missing
    when the batch carries no indices."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2 and batch[1] is not None:
        return batch[0], batch[1]
    raise ValueError(f"this target batch has no sample indices: {NEEDS_INDEX}")
