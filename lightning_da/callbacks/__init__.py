"""Training-time helpers shared by methods."""

from lightning_da.callbacks.history import MetricHistory

__all__ = ["MetricHistory"]
