"""JAN: joint adaptation network (Long et al., "Deep Transfer Learning with Joint Adaptation
Networks", ICML 2017).

The joint MMD over the bottleneck features f and the softmax outputs g = softmax(z), with the
product kernel ``k_f(f_i, f_j) * k_g(g_i, g_j)``, is minimised with the classification loss:

    L = CE(z_s, y_s) + trade_off * JMMD([f_s, g_s], [f_t, g_t])

(``losses.alignment.jmmd``; the softmax is not detached, so the JMMD also trains the classifier).
Defaults are TLlib's JAN (``examples/.../jan.py``): on f the Gaussian kernels at ``2^k`` (k = -3..1)
times the mean squared distance, on g one Gaussian of fixed width ``sigma = 0.92``, the quadratic
(unbiased) estimate (TLlib's ``--linear`` is off) with TLlib's constant ``2 / (n - 1)``, trade-off 1.
TLlib's default is plain JAN, not JAN-A.

``adversarial=true`` is JAN-A (TLlib's ``--adversarial``): each layer first goes through its own
:class:`~lightning_da.losses.alignment.AdversarialTheta` ``R(W R(.) + b)`` (W = I, b = 0 at the
start) that ascends the JMMD while the network descends it; TLlib trains the thetas at 0.1 x the
base learning rate, so ``lr_mult.thetas`` defaults to 0.1 (set it to override).

Flags: ``estimator: linear | biased``; ``offset: false``; ``feature_alphas``, ``softmax_sigma``.
Differences from the paper, as in TLlib: the paper joins several top layers (fc6-fc8 of AlexNet,
pool5+fc of ResNet); TLlib and this use the bottleneck and the softmax. TLlib's JAN bottleneck is
``Linear -> BatchNorm -> ReLU -> Dropout``; the digits experiments use the shared digits heads.
"""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import nn

from lightning_da.losses.alignment import DEFAULT_ALPHAS, ESTIMATORS, AdversarialTheta, jmmd
from lightning_da.methods.base import SingleStepMethod


class JAN(SingleStepMethod):
    def __init__(self, *args, feature_alphas: Sequence[float] = DEFAULT_ALPHAS, softmax_sigma: float = 0.92,
                 estimator: str = "unbiased", offset: bool = True, adversarial: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown MMD estimator {estimator!r}; choose one of {ESTIMATORS}")
        self.kernels = ({"alphas": tuple(float(a) for a in feature_alphas)}, {"sigma": float(softmax_sigma)})
        self.estimator, self.offset = estimator, offset
        self.thetas = nn.ModuleList([AdversarialTheta(self.bottleneck.out_features),
                                     AdversarialTheta(self.num_classes)]) if adversarial else None
        if adversarial:
            self.lr_mult.setdefault("thetas", 0.1)  # TLlib: the thetas' group has lr 0.1 x the base lr

    def transfer_loss(self, step):
        layers = [step.features, F.softmax(step.logits, dim=1)]
        if self.thetas is not None:
            layers = [theta(z) for theta, z in zip(self.thetas, layers)]
        ns = step.n_source
        return jmmd([z[:ns] for z in layers], [z[ns:] for z in layers], self.kernels, self.estimator, self.offset), {}
