"""Losses of bi-classifier methods (MCD, CGDM): two heads F1, F2 on the features of one generator G.

* :func:`classifier_discrepancy`: MCD's L1 discrepancy between the heads' softmax outputs.
* :func:`cgdm_entropy`: CGDM's entropy term in its three released variants.
* :func:`weighted_cross_entropy`: CGDM's entropy-weighted CE on target pseudo labels.
* :func:`gradient_discrepancy`: CGDM's ``L_GD`` for one head (cosine distance between the source and
  target loss gradients w.r.t. the head's parameters, differentiable, second order).
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

from lightning_da.losses.entropy import entropy, information_maximization

ENTROPY_MODES = ("im", "conditional", "diversity")


def classifier_discrepancy(logits1: torch.Tensor, logits2: torch.Tensor) -> torch.Tensor:
    """MCD discrepancy, averaged over batch and classes:

        disc = mean_{i,c} | softmax(z1)_ic - softmax(z2)_ic |
    """
    return (F.softmax(logits1, dim=1) - F.softmax(logits2, dim=1)).abs().mean()


def cgdm_entropy(logits: torch.Tensor, mode: str = "im", eps: float = 1e-5) -> torch.Tensor:
    """CGDM entropy term on ``p = softmax(logits)``, with ``H(q) = -sum_c q_c log(q_c + eps)``:

    * ``"im"`` (VisDA / ImageCLEF / DomainNet): ``mean_i H(p_i) + sum_c (p̄_c + eps) log(p̄_c + eps)``
      with ``p̄ = mean_i p_i`` (conditional minus marginal entropy, eps also multiplying in the
      marginal term as in the original; minimising it gives confident and diverse predictions).
    * ``"conditional"`` (old Office-31 script, ``Entropy_condition``): ``mean_i H(p_i)``.
    * ``"diversity"`` (old digits script): ``-mean_c log(mean_i p_ic + eps)``.
    """
    if mode not in ENTROPY_MODES:
        raise ValueError(f"unknown CGDM entropy mode {mode!r}; available: {list(ENTROPY_MODES)}")
    if mode == "diversity":
        return -torch.log(F.softmax(logits, dim=1).mean(0) + eps).mean()
    if mode == "conditional":
        return entropy(logits, eps=eps)
    return information_maximization(logits, eps, shift_marginal=True)


def weighted_cross_entropy(
    logits: torch.Tensor, pseudo_labels: torch.Tensor, extra_batch_factor: bool = True, detach_weights: bool = False
) -> torch.Tensor:
    """Entropy-weighted CE on pseudo labels (CGDM ``utils.Weighted_CrossEntropy``):

        w_i = 1 + exp(-H(softmax(z_i))),    W = sum_j w_j   (a constant: no gradient through W)
        loss = mean_i (w_i / W) CE_i         (extra_batch_factor=True, the faithful quirk: the
                                              weighted average further scaled by 1/B)
        loss = sum_i (w_i / W) CE_i          (extra_batch_factor=False, the plain weighted average)

    As in the original, only the normaliser ``W`` is detached: each ``w_i`` carries gradient into
    the logits (and, inside ``L_GD``, into the second-order gradient that reaches G).
    ``detach_weights=True`` detaches the whole weight (not the original's form; it changes
    the loss gradient by 21-50% and step C's gradient into G by about 0.7%).
    """
    w = 1.0 + torch.exp(-entropy(logits.detach() if detach_weights else logits, reduction="none"))
    w = w / w.sum().detach()
    weighted = w * F.cross_entropy(logits, pseudo_labels, reduction="none")
    return weighted.mean() if extra_batch_factor else weighted.sum()


def _grads(loss: torch.Tensor, params: list[torch.Tensor], which: str) -> tuple[torch.Tensor, ...]:
    if not loss.requires_grad:
        raise ValueError(f"gradient_discrepancy: the {which} loss does not depend on any tensor requiring grad")
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    for k, g in enumerate(grads):
        if g is None:
            raise ValueError(
                f"gradient_discrepancy: parameter {k} (shape {tuple(params[k].shape)}) is not used by the "
                f"{which} loss; pass only the parameters of the head that produced both losses"
            )
    return grads


def gradient_discrepancy(
    source_loss: torch.Tensor, target_loss: torch.Tensor, params: Iterable[torch.Tensor]
) -> torch.Tensor:
    """CGDM gradient discrepancy of one head (``gradient_discrepancy_loss_margin``):

        g_s = dL_src/dP,  g_t = dL_tgt/dP   (create_graph=True, so the result is differentiable)
        cos_P = mean_r cos(g_t[r], g_s[r])   for P with >= 2 dims (rows = output units, rest flattened)
        cos_P = cos(g_t, g_s)                for 1-D P (whole vector)
        L_GD = mean_P (1 - cos_P)

    One ``torch.autograd.grad`` call per loss over all parameters (identical to per-tensor calls).
    """
    params = list(params)
    if not params:
        raise ValueError("gradient_discrepancy: got a head without parameters to take gradients of")
    for k, p in enumerate(params):
        if not p.requires_grad:
            raise ValueError(f"gradient_discrepancy: parameter {k} (shape {tuple(p.shape)}) does not require grad")
    g_src = _grads(source_loss, params, "source")
    g_tgt = _grads(target_loss, params, "target")
    terms = []
    for gs, gt in zip(g_src, g_tgt):
        if gs.dim() >= 2:
            cos = F.cosine_similarity(gt.flatten(1), gs.flatten(1), dim=1).mean()
        else:
            cos = F.cosine_similarity(gt.reshape(-1), gs.reshape(-1), dim=0)
        terms.append(1.0 - cos)
    return torch.stack(terms).mean()
