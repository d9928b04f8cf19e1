"""Losses as plain functions and small modules, each with its formula in the docstring."""

from lightning_da.losses.adversarial import cdan_loss, dann_loss, entropy_weights, multilinear_map
from lightning_da.losses.distillation import agreement_weight, gini_impurity, sigmoid_ramp
from lightning_da.losses.entropy import entropy
from lightning_da.losses.regularizers import EXTRA_LOSSES, ExtraLoss
from lightning_da.losses.self_training import fixmatch_loss
from lightning_da.losses.semantic import (agreement_mask, centroid_alignment_loss, class_means,
                                          implicit_semantic_correlation_loss, prototype_labels)

__all__ = ["agreement_weight", "gini_impurity", "sigmoid_ramp", "fixmatch_loss", "cdan_loss", "dann_loss", "entropy_weights", "multilinear_map", "entropy", "EXTRA_LOSSES", "ExtraLoss",
           "agreement_mask", "centroid_alignment_loss", "class_means", "implicit_semantic_correlation_loss", "prototype_labels"]
