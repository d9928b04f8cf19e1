"""The few private Lightning internals the library reads, in one place, each with a fallback.

Lightning offers no public way to ask how many training batches have stepped (its loggers count
these, while ``global_step`` counts optimiser steps, several per batch under manual optimisation),
nor to collect and restore every random generator's state. When an upgrade moves one of these,
this is the only file to change (the tests of the progress line, logging cadence and resumed runs
fail first).
"""

from __future__ import annotations

from typing import Any

import lightning as L

try:  # lightning >= 2.0
    from lightning.fabric.utilities.seed import _collect_rng_states as collect_rng_states
    from lightning.fabric.utilities.seed import _set_rng_states as set_rng_states
except ImportError as err:  # pragma: no cover - a Lightning version this library was not tested with
    raise ImportError("lightning-da needs lightning.fabric.utilities.seed._collect_rng_states / _set_rng_states "
                      "(lightning >= 2.4, < 3); install a supported lightning version") from err

__all__ = ["batches_that_stepped", "collect_rng_states", "set_rng_states"]


def batches_that_stepped(trainer: L.Trainer, default: Any = None) -> int:
    """Training batches done so far in the fit (restored on resume), as Lightning's logger counts
    them; ``default`` (else ``trainer.global_step``) where this Lightning does not keep the count."""
    count = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", None)
    if count is None:
        return trainer.global_step if default is None else default
    return count
