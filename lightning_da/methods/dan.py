"""DAN: deep adaptation network (Long et al., "Learning Transferable Features with Deep Adaptation
Networks", ICML 2015).

The multi-kernel MMD between the source and target bottleneck features is minimised with the
classification loss:

    L = CE(C(f_s), y_s) + trade_off * MK-MMD^2(f_s, f_t),   k = sum_a exp(-D / (2 a mean(D)))

(``losses.alignment.mk_mmd``). Defaults are TLlib's DAN (``examples/.../dan.py``): bandwidth
multiples ``alphas = 2^k, k = -3..1`` of the batch's mean squared distance, equal kernel weights,
the *linear-time* estimate (TLlib's ``--non-linear`` is off by default), its constant offset
``2 / (n - 1)``, and trade-off 1.

Flags (deviations, off by default): ``estimator: unbiased | biased`` for the quadratic estimates
(``unbiased`` is TLlib's ``--non-linear``); ``offset: false`` drops the constant.
Differences from the paper, as in TLlib: the paper adapts fc6-fc8 of AlexNet and learns the kernel
weights beta by a quadratic program; here (as TLlib) one layer, the bottleneck, with equal weights.
TLlib forwards source and target in two calls; here ``[source; target]`` goes in one (so a
BatchNorm in the feature path sees both domains; the digits LeNet has none).
"""

from __future__ import annotations

from typing import Sequence

from lightning_da.losses.alignment import DEFAULT_ALPHAS, ESTIMATORS, mk_mmd
from lightning_da.methods.base import SingleStepMethod


class DAN(SingleStepMethod):
    def __init__(self, *args, alphas: Sequence[float] = DEFAULT_ALPHAS, estimator: str = "linear",
                 offset: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown MMD estimator {estimator!r}; choose one of {ESTIMATORS}")
        self.alphas, self.estimator, self.offset = tuple(float(a) for a in alphas), estimator, offset

    def transfer_loss(self, step):
        return mk_mmd(step.source_features, step.target_features, self.alphas, self.estimator, self.offset), {}
