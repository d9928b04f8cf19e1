"""SHOT's target objective (Liang et al., ICML 2020, "Do We Really Need to Access the Source Data?
Source Hypothesis Transfer for Unsupervised Domain Adaptation", Eqs. 2-4 and 6).

On a target batch with logits ``z_i``, ``p_i = softmax(z_i)``, ``p_bar = mean_i p_i`` and clustering
pseudo labels ``y_hat_i``:

    L = ent_par * [ mean_i H(p_i) - gent * H(p_bar) ] + cls_par * CE(z, y_hat)

with ``H(p) = -sum_c p_c log(p_c + eps)`` (``eps = 1e-5`` in both entropies, as the official code's
``loss.Entropy`` and its diversity term) and ``CE`` the mean cross-entropy. The bracket is the
information-maximisation (IM) loss: confident predictions (low conditional entropy) that are
diverse over the batch (high entropy of the mean prediction). SHOT's ``gent`` is a switch
(``True`` = 1 here); ``cls_par = 0`` is SHOT-IM.

For ``gent = 1`` the bracket equals :func:`lightning_da.losses.entropy.information_maximization`
(the same form and eps); it is computed here in its two parts so that each can be logged and the
diversity weighed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_da.losses.entropy import entropy


def shot_target_loss(logits: torch.Tensor, pseudo_labels: torch.Tensor | None = None, ent_par: float = 1.0,
                     gent: float = 1.0, cls_par: float = 0.1, eps: float = 1e-5) -> tuple[torch.Tensor, dict]:
    """The SHOT target loss of ``logits`` (B, C) and ``pseudo_labels`` (B,) (see the module doc).

    ``pseudo_labels`` may be None only when ``cls_par == 0`` (SHOT-IM).

    Returns:
        ``(loss, terms)`` with ``terms``: ``entropy`` (mean H(p_i)), ``diversity`` (H(p_bar)),
        ``im`` (``entropy - gent * diversity``) and, when ``cls_par != 0``, ``pseudo`` (the CE).
    """
    cond = entropy(logits, eps=eps)
    p_bar = F.softmax(logits, dim=1).mean(0)
    div = -(p_bar * torch.log(p_bar + eps)).sum()
    im = cond - gent * div
    loss = ent_par * im
    terms = {"entropy": cond, "diversity": div, "im": im}
    if cls_par:
        if pseudo_labels is None:
            raise ValueError("shot_target_loss: cls_par != 0 needs pseudo labels (cls_par=0 is SHOT-IM)")
        ce = F.cross_entropy(logits, pseudo_labels)
        loss = loss + cls_par * ce
        terms["pseudo"] = ce
    return loss, terms
