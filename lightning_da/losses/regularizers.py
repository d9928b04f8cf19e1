"""Extra loss terms that any method can add from the config: ``method.extra_losses={name: weight}``.

Each term maps the target logits of the current batch to a scalar to minimise:

* ``entropy``: ``mean_i H(p_i)`` (conditional entropy minimisation).
* ``im``: information maximisation, ``mean_i H(p_i) - H(mean_i p_i)`` (confident and diverse).
* ``bnm``: batch nuclear-norm maximisation (Cui et al. 2020) as its official code computes it,
  ``-mean(singular values of P)`` = ``-||P||_* / min(B, C)`` (the paper writes ``/ B``).
* ``mcc``: minimum class confusion (Jin et al. 2020) at temperature T = 2.5:
  ``p = softmax(z / T)``, ``w_i = B (1 + exp(-H(p_i))) / sum_j (1 + exp(-H(p_j)))``,
  ``C = P^T diag(w) P`` with rows normalised to sum 1, loss ``(sum C - trace C) / num_classes``.
* ``class_balance``: ``-1/K sum_k log(mean_i p_ik + 1e-6)``, the cross-entropy of the uniform
  distribution to the batch's mean prediction (smallest when every class is predicted equally often);
  TLlib's MCD calls it ``entropy`` (``tllib.alignment.mcd.entropy``, ``--trade-off-entropy``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from lightning_da.losses.entropy import entropy, information_maximization


def batch_nuclear_norm(logits: torch.Tensor) -> torch.Tensor:
    return -torch.linalg.svdvals(F.softmax(logits, dim=1)).mean()


def minimum_class_confusion(logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    b, c = logits.shape
    p = F.softmax(logits / temperature, dim=1)
    w = 1.0 + torch.exp(-entropy(logits / temperature, reduction="none")).detach()
    w = (b * w / w.sum()).unsqueeze(1)
    confusion = (p * w).t() @ p
    confusion = confusion / confusion.sum(dim=1, keepdim=True)
    return (confusion.sum() - confusion.trace()) / c


def class_balance(logits: torch.Tensor) -> torch.Tensor:
    return -torch.log(F.softmax(logits, dim=1).mean(0) + 1e-6).mean()


EXTRA_LOSSES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "entropy": entropy,
    "im": information_maximization,
    "bnm": batch_nuclear_norm,
    "mcc": minimum_class_confusion,
    "class_balance": class_balance,
}


class ExtraLoss:
    """Weighted sum of the configured extra terms on the target logits; also returns each term."""

    def __init__(self, weights: dict[str, float] | None = None):
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(EXTRA_LOSSES))
        if unknown:
            raise ValueError(f"unknown extra loss {unknown}; available: {sorted(EXTRA_LOSSES)}")
        self.weights = {k: float(v) for k, v in weights.items() if float(v) != 0.0}

    def __bool__(self) -> bool:
        return bool(self.weights)

    def __call__(self, target_logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = {name: EXTRA_LOSSES[name](target_logits) for name in self.weights}
        total = sum(self.weights[n] * t for n, t in terms.items())
        return total, terms
