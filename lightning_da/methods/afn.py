"""AFN: adaptive feature norm (Xu et al., "Larger Norm More Transferable: An Adaptive Feature Norm
Approach for Unsupervised Domain Adaptation", ICCV 2019), as TLlib's ``afn.py``.

The bottleneck features of both domains are driven to larger norms (``losses.feature_norm``):

    L = CE(z_s, y_s) + trade_off * [ L_AFN(f_s) + L_AFN(f_t) ] + sum_k w_k L_k(z_t)

* ``variant: safn`` (default): ``L_AFN(f) = mean_i (sg(||f_i||) + delta - ||f_i||)^2`` (stepwise).
* ``variant: hafn``: ``L_AFN(f) = (mean_i ||f_i|| - radius)^2`` (hard, a fixed radius).

TLlib's target entropy term (``--trade-off-entropy``, ``mean_j H(p_j)``) is the library's
``extra_losses: {entropy: w}`` (same formula, eps 1e-5); TLlib's default is off, its Office-31 and
digits scripts use 0.1 and 0.03.

Defaults (TLlib ``afn.py``): ``trade_off`` 0.05 (``--trade-off-norm``), ``delta`` 1 (``-r``; the
digits scripts use 0.3 for M->U, 0.1 for U->M), HAFN ``radius`` 25 (official code). TLlib's AFN head
(``tllib.alignment.afn.ImageClassifier``) is ``Linear(d, 1000) -> BN -> ReLU -> Dropout(0.5)``: the
config's ``bottleneck: {dim: 1000, batch_norm: true, relu: true, dropout: 0.5}``, plus

* ``l2_preserving_dropout: true``: in training the bottleneck output is multiplied by
  ``sqrt(1 - p)``, so its dropout scales kept units by ``1 / sqrt(1 - p)`` (preserving the expected
  L2 norm rather than the mean, TLlib's ``Block``); p is the bottleneck's dropout.
* ``tllib_init: true``: bottleneck and classifier Linear weights and biases ~ N(0, 0.01), bottleneck
  BN weights ~ N(1, 0.01) with zero bias (then ``classifier_init`` and ``bottleneck.init`` must be
  left unset).

* ``domain_forward``: ``joint`` (default) forwards ``[source; target]`` in one call, so the
  bottleneck's BatchNorm normalises the mixed batch; ``separate`` forwards the source batch, then the
  target batch (TLlib's ``afn.py``: ``model(x_s)``, ``model(x_t)``), so in training each domain is
  normalised with its own batch statistics and the running statistics are updated twice per step,
  source first. ``separate`` cannot give a domain-aware norm its split and refuses one.

The optimiser is config: TLlib's SGD has momentum 0.9 on the bottleneck and head only (none on the
backbone: ``group_options: {backbone: {momentum: 0.0}}``), no nesterov, and a constant learning rate
(``experiment=digits_tllib/afn`` pins all three).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from lightning_da.losses.feature_norm import afn_loss, hafn_loss
from lightning_da.methods.base import SingleStepMethod
from lightning_da.models.heads import tllib_head_init_

VARIANTS = ("safn", "hafn")
DOMAIN_FORWARDS = ("joint", "separate")


class AFN(SingleStepMethod):
    def __init__(self, *args, variant: str = "safn", delta: float = 1.0, radius: float = 25.0,
                 l2_preserving_dropout: bool = True, tllib_init: bool = True, trade_off: float | None = 0.05,
                 classifier_init: str | None = None, domain_forward: str = "joint", **kwargs):
        if variant not in VARIANTS:
            raise ValueError(f"unknown AFN variant {variant!r}; choose one of {VARIANTS}")
        if domain_forward not in DOMAIN_FORWARDS:
            raise ValueError(f"unknown AFN domain_forward {domain_forward!r}; choose one of {DOMAIN_FORWARDS}")
        bottleneck_init = (kwargs.get("bottleneck") or {}).get("init")
        if tllib_init and (classifier_init is not None or bottleneck_init is not None):
            raise ValueError("AFN's tllib_init sets the bottleneck and classifier initialisation itself: leave "
                             "method.classifier_init and method.bottleneck.init unset, or set tllib_init=false")
        super().__init__(*args, trade_off=trade_off, classifier_init=classifier_init, **kwargs)
        self.variant, self.delta, self.radius = variant, float(delta), float(radius)
        self.domain_forward = domain_forward
        p = next((m.p for m in self.bottleneck.modules() if isinstance(m, nn.Dropout)), 0.0)
        self.dropout_scale = math.sqrt(1.0 - p) if l2_preserving_dropout else 1.0
        if tllib_init:
            self._tllib_init()

    def _tllib_init(self) -> None:
        tllib_head_init_(self.bottleneck, self.classifier)

    @classmethod
    def needs_for(cls, options):
        # "separate" forwards each domain on its own: there is no joint batch to split
        return dataclasses.replace(cls.needs, domain_split=options.get("domain_forward", "joint") == "joint")

    def domain_split_refusal(self) -> str:
        return ("AFN with domain_forward=separate forwards each domain on its own and cannot use a domain-aware "
                "norm (dsbn/transnorm/rn); use domain_forward=joint or norm=bn")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        f = super().features(x)
        return f * self.dropout_scale if self.training and self.dropout_scale != 1.0 else f

    def forward_domains(self, xs: torch.Tensor, xt: torch.Tensor):
        if self.domain_forward == "joint":
            return super().forward_domains(xs, xt)
        f = torch.cat([self.features(xs), self.features(xt)])  # source first, then target (TLlib)
        return f, self.classify(f)

    def norm_loss(self, features: torch.Tensor) -> torch.Tensor:
        if self.variant == "safn":
            return afn_loss(features, self.delta)
        return hafn_loss(features, self.radius)

    def transfer_loss(self, step):
        fs, ft = step.source_features, step.target_features
        loss = self.norm_loss(fs) + self.norm_loss(ft)
        logs = {}
        if self.logging_step():
            with torch.no_grad():
                logs = {"train/feature_norm_source": fs.norm(dim=1).mean(),
                        "train/feature_norm_target": ft.norm(dim=1).mean()}
        return loss, logs
