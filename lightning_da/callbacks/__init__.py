"""Training-time helpers shared by methods."""

from lightning_da.callbacks.history import MetricHistory
from lightning_da.callbacks.stepwise import StepwiseTargetAccuracy

__all__ = ["MetricHistory", "StepwiseTargetAccuracy"]
