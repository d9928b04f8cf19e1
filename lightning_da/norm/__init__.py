"""Normalization layers and the conversion of a built network (the ``norm`` config group).

``convert_norm(module, kind)`` replaces the BatchNorm layers of a built network with the chosen
kind, carrying pretrained weights and running statistics over. ``bn`` keeps BatchNorm as it is.

The domain-split contract. A domain-aware layer (DSBN, TransNorm, RN) must know which rows of a
training batch are source and which are target. A method forwards ``[source; target]`` in one call
inside ``domain_split(net, n_source)``; every :class:`DomainAwareNorm` in ``net`` then sees
``self.n_source``. A domain-aware layer that runs in training mode without a split raises
:class:`DomainSplitError`. In evaluation mode they normalise with the target statistics.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn


class DomainSplitError(RuntimeError):
    """A domain-aware norm ran without knowing where the source rows end."""


class DomainAwareNorm(nn.Module):
    """Base for norms with per-domain statistics. ``n_source`` is set by :func:`domain_split`."""

    n_source: int | None = None

    def require_split(self, batch_size: int) -> int:
        if self.n_source is None:
            raise DomainSplitError(
                f"{type(self).__name__} got a training batch of {batch_size} rows without a domain split. "
                "Forward [source; target] inside lightning_da.norm.domain_split(net, n_source), or use norm=bn."
            )
        if not 0 < self.n_source < batch_size:
            raise DomainSplitError(f"{type(self).__name__}: domain split {self.n_source} does not fit a batch of {batch_size}")
        return self.n_source


def domain_aware_layers(module: nn.Module) -> list[DomainAwareNorm]:
    return [m for m in module.modules() if isinstance(m, DomainAwareNorm)]


@contextmanager
def domain_split(module: nn.Module, n_source: int):
    """Tell every domain-aware norm in ``module`` that the first ``n_source`` rows are source."""
    layers = domain_aware_layers(module)
    for m in layers:
        m.n_source = n_source
    try:
        yield
    finally:
        for m in layers:
            m.n_source = None


NORMS = ("bn",)


def convert_norm(module: nn.Module, kind: str = "bn") -> nn.Module:
    """Replace the BatchNorm layers of ``module`` by ``kind`` and return it. ``bn`` changes nothing."""
    if kind not in NORMS:
        raise ValueError(f"unknown norm {kind!r}; available: {list(NORMS)}")
    return module
