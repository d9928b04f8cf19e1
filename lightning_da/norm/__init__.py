"""Normalization layers and the conversion of a built network (the ``norm`` config group).

``convert_norm(module, kind)`` replaces the BatchNorm layers (1-d, 2-d, 3-d; timm's BatchNormAct
keeps its activation) of a built network with ``kind`` and carries the pretrained affine and
running statistics over:

* ``bn``: BatchNorm as built (nothing changes).
* ``none``: no normalization: every BatchNorm layer is removed (an identity; timm's BatchNormAct
  keeps its activation). The default of unsupervised DA on feature files (``data=features``), where
  BatchNorm's per-unit standardisation with source statistics costs transfer (``docs/own_data.md``).
* ``adabn``: BatchNorm in training; before every evaluation the running statistics are re-estimated
  on the target data (:mod:`lightning_da.norm.adabn`). Any method can use it.
* ``dsbn``, ``transnorm``, ``rn``: domain-aware norms (:class:`DSBN`, :class:`TransNorm`,
  :class:`ReciprocalNorm`). They need the domain split (see :mod:`lightning_da.norm.base`); a method
  that cannot give it refuses them.

What a norm does around training (RN's gate clamp, AdaBN's re-estimation) is :class:`NormHooks`, a
callback every method returns for its own layers (:func:`norm_callbacks`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_da.norm.adabn import adabn_layers, adapt_batchnorm, mark_adabn
from lightning_da.norm.base import DomainAwareNorm, DomainSplitError, TwoDomainNorm, domain_aware_layers, domain_split
from lightning_da.norm.dsbn import DSBN
from lightning_da.norm.hooks import NormHooks, clamp_norm_gates, norm_callbacks
from lightning_da.norm.rn import ReciprocalNorm
from lightning_da.norm.transnorm import TransNorm

DOMAIN_NORMS: dict[str, type[TwoDomainNorm]] = {"dsbn": DSBN, "transnorm": TransNorm, "rn": ReciprocalNorm}
NORMS = ("bn", "none", "adabn", *DOMAIN_NORMS)

__all__ = ["DSBN", "NORMS", "DomainAwareNorm", "DomainSplitError", "ReciprocalNorm", "TransNorm", "TwoDomainNorm",
           "NormHooks", "adabn_layers", "adapt_batchnorm", "clamp_norm_gates", "convert_norm", "domain_aware_layers",
           "domain_split", "mark_adabn", "norm_callbacks"]


def convert_norm(module: nn.Module, kind: str = "bn", rn1d_uniform_gamma: bool = True, **options) -> nn.Module:
    """Replace the BatchNorm layers of ``module`` by ``kind`` and return it (in place where possible;
    a bare BatchNorm ``module`` is returned converted).

    ``options`` go to the layer class (``shared_affine`` for dsbn, ``distance`` for rn).
    ``rn1d_uniform_gamma`` (rn only, faithful default True): converted 1-d layers get gamma ~ U(0, 1),
    the RN code's RN1d initialisation (its ``init_weights`` only matches "BatchNorm" class names), in
    place of the BatchNorm's gamma.
    """
    if kind not in NORMS:
        raise ValueError(f"unknown norm {kind!r}; available: {list(NORMS)}")
    if kind in ("bn", "none", "adabn") and options:
        raise ValueError(f"norm={kind} takes no options, got {sorted(options)}")
    if kind == "bn":
        return module
    if kind == "adabn":
        return mark_adabn(module)

    def replace(bn: _BatchNorm) -> nn.Module:
        layer = nn.Identity() if kind == "none" else DOMAIN_NORMS[kind].from_batchnorm(bn, **options)
        if kind == "rn" and rn1d_uniform_gamma and isinstance(bn, nn.BatchNorm1d) and layer.affine:
            with torch.no_grad():
                layer.weight.uniform_(0.0, 1.0)
        act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)  # timm BatchNormAct2d
        extras = [m for m in (drop, act) if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]
        return nn.Sequential(layer, *extras) if extras else layer

    if isinstance(module, _BatchNorm):
        return replace(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm):
                setattr(parent, name, replace(child))
    return module

