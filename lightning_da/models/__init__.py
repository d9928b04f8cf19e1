"""Backbones, heads, gradient reversal and discriminators."""

from lightning_da.models.backbones import BACKBONES, build_backbone
from lightning_da.models.grl import GradientReversal, grl_coefficient, reverse_grad
from lightning_da.models.heads import Bottleneck, Classifier, DomainDiscriminator, MLPClassifier
from lightning_da.models.multimodal import TwoBranchNet

__all__ = ["BACKBONES", "build_backbone", "GradientReversal", "grl_coefficient", "reverse_grad", "Bottleneck",
           "Classifier", "DomainDiscriminator", "MLPClassifier", "TwoBranchNet"]
