"""Training-time helpers shared by methods."""

from lightning_da.callbacks.finite_loss import FiniteLossCheck, NonFiniteLossError
from lightning_da.callbacks.history import MetricHistory
from lightning_da.callbacks.interrupt import InterruptCheckpoint
from lightning_da.callbacks.progress import ProgressLine
from lightning_da.callbacks.rng_state import RNGStateCheckpoint
from lightning_da.callbacks.run_signature import ResumeMismatchError, RunSignature
from lightning_da.callbacks.stepwise import StepwiseTargetAccuracy
from lightning_da.callbacks.visuals import EmbeddingVisuals

__all__ = ["EmbeddingVisuals", "FiniteLossCheck", "InterruptCheckpoint", "MetricHistory", "NonFiniteLossError", "ProgressLine",
           "RNGStateCheckpoint", "ResumeMismatchError", "RunSignature", "StepwiseTargetAccuracy"]
