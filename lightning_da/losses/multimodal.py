"""Multi-modal, multi-domain losses of M2CAN and its target-sample selection (UACR).

Notation: per domain d, unit-norm features ``t, t'`` (branch t, weak and strong view) and
``v, v'`` (branch v), rows i, j over the domain's batch of B samples.

* :func:`cmcfa_loss` (cross-modal contrastive feature alignment, one domain), temperature tau (1):

      pos_i = sum_{a in {t,t'}, b in {v,v'}} exp(a_i . b_i / tau)
      den_i = sum_{a, b} sum_j exp(a_i . b_j / tau)
      l_i   = -log(pos_i / den_i)
      k_i   = KL(p_v,i || p_t,i)   (modality-head softmaxes, not detached)
      L     = mean_i(l_i exp(-k_i)) + mean_i k_i

* :func:`cdcfa_loss` (cross-domain contrastive, no negatives), over domain pairs d < d':

      L = 1/8 sum_{d<d'} [ sum_{a in {t_d,t'_d}, b in {t_d',t'_d'}} -mean(a b^T)
                         + sum_{a in {v_d,v'_d}, b in {v_d',v'_d'}} -mean(a b^T) ]

* :func:`soft_label_domain_loss` (CDAFA, one pair): ``mean BCE(sigmoid(D(.)), y)`` with
  ``y = 1 - eps`` on the first domain's rows and ``eps`` on the second's (eps = 0.8 in the code,
  i.e. 0.2 / 0.8). The input is CDAN's ``softmax(g).detach() (outer) X`` through a GRL (caller).
* :func:`uacr_select` (uncertainty-aware collaborative reweighting of target samples):
  ``p = softmax(mean_h z_h)``, ``s = max p * exp(-(KL(p1||p2) + KL(p2||p1)))``; per predicted
  class keep the ``floor(rate N / C)`` highest scores.

MCC on the target is :func:`lightning_da.losses.regularizers.minimum_class_confusion` (T = 2).
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
import torch.nn.functional as F


def kl_rows(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` per row from log-probabilities."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def cmcfa_loss(t: torch.Tensor, t2: torch.Tensor, v: torch.Tensor, v2: torch.Tensor, logits_t: torch.Tensor,
               logits_v: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Uncertainty-weighted InfoNCE between the two modalities plus their heads' agreement (one domain)."""
    sims = torch.stack([a @ b.T for a in (t, t2) for b in (v, v2)]) / temperature  # (4, B, B)
    log_pos = torch.logsumexp(torch.diagonal(sims, dim1=1, dim2=2), dim=0)         # (B,)
    log_den = torch.logsumexp(sims.permute(1, 0, 2).flatten(1), dim=1)             # (B,)
    nce = log_den - log_pos
    kappa = kl_rows(F.log_softmax(logits_v, -1), F.log_softmax(logits_t, -1))
    return (nce * torch.exp(-kappa)).mean() + kappa.mean()


def cdcfa_loss(text: Sequence[tuple[torch.Tensor, torch.Tensor]], image: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Cross-domain feature alignment: ``text[d] = (t_d, t'_d)``, ``image[d] = (v_d, v'_d)``."""
    total = None
    for feats in (text, image):
        for d, e in itertools.combinations(range(len(feats)), 2):
            for a in feats[d]:
                for b in feats[e]:
                    term = -(a @ b.T).mean()
                    total = term if total is None else total + term
    if total is None:
        raise ValueError("cdcfa_loss needs at least two domains")
    return total / 8.0


def soft_label_domain_loss(d_first: torch.Tensor, d_second: torch.Tensor, eps: float = 0.8) -> torch.Tensor:
    """``mean BCE`` over both domains' discriminator logits, targets ``1 - eps`` (first) and ``eps``."""
    logits = torch.cat([d_first.reshape(-1), d_second.reshape(-1)])
    labels = torch.cat([torch.full_like(d_first.reshape(-1), 1.0 - eps), torch.full_like(d_second.reshape(-1), eps)])
    return F.binary_cross_entropy_with_logits(logits, labels)


def uacr_scores(head_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(score, prediction)`` from ``(N, H, C)`` head logits. With H = 2 (the original) the
    disagreement is ``KL(p1||p2) + KL(p2||p1)``; with more heads, its mean over head pairs."""
    p = F.softmax(head_logits.mean(1), -1)
    conf, pred = p.max(-1)
    logp = F.log_softmax(head_logits, -1)
    pairs = list(itertools.combinations(range(head_logits.shape[1]), 2))
    if not pairs:
        dis = torch.zeros_like(conf)
    else:
        dis = sum(kl_rows(logp[:, a], logp[:, b]) + kl_rows(logp[:, b], logp[:, a]) for a, b in pairs) / len(pairs)
    return conf * torch.exp(-dis), pred


def uacr_rate(epoch: int, start: float = 0.3, update: float = 0.3) -> float:
    """Selection rate after epoch ``epoch``: ``min(start + update * epoch, 1)``."""
    return min(start + update * epoch, 1.0)


def uacr_select(head_logits: torch.Tensor, rate: float, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (into the N rows) and pseudo labels of the selected target samples: per predicted
    class, the ``floor(rate * N / C)`` highest :func:`uacr_scores` (all of the class if fewer),
    highest score first within each class, classes in order."""
    n, _, c = head_logits.shape
    c = num_classes or c
    score, pred = uacr_scores(head_logits)
    k = math.floor(rate * n / c)
    chosen, labels = [], []
    for cls in range(c):
        rows = (pred == cls).nonzero().flatten()
        if len(rows) == 0 or k == 0:
            continue
        order = torch.argsort(score[rows], descending=True, stable=True)[:k]
        chosen.append(rows[order])
        labels.append(torch.full((len(order),), cls, dtype=torch.long, device=rows.device))
    if not chosen:
        empty = torch.zeros(0, dtype=torch.long, device=head_logits.device)
        return empty, empty
    return torch.cat(chosen), torch.cat(labels)
