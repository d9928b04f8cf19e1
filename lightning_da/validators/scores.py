"""Unsupervised validation scores for domain adaptation: higher is better for every one.

Each is a plain function of tensors gathered over an evaluation pass (target training samples, and for
some the held-out source); :mod:`lightning_da.validators` wraps them with the data they need.

* entropy (negated mean prediction entropy):   ``-1/N sum_i H(p_i)``
* information maximisation (SHOT's IM):        ``H(1/N sum_i p_i) - 1/N sum_i H(p_i)``
* SND, soft neighbourhood density (Saito et al., ICCV 2021): rows ``x_i`` L2-normalised (softmax
  outputs by default), ``s_ij = x_i . x_j / tau`` with ``s_ii`` excluded, ``P_i = softmax_j(s_ij)``,
  score ``1/N sum_i H(P_i)`` (tau = 0.05)
* BNM (Cui et al., CVPR 2020): the nuclear norm of the prediction matrix over the rows, ``||P||_* / N``
* DEV, deep embedded validation (You et al., ICML 2019): importance weights
  ``w(x) = (n_s / n_t) P(target|x) / P(source|x)`` from a logistic domain classifier on the
  features, the weighted source-validation loss ``l_w = w * CE`` with the control variate
  ``eta = -Cov(l_w, w) / Var(w)``; risk ``mean(l_w) + eta mean(w) - eta``; score ``-risk``
* ClassAMI: the adjusted mutual information (arithmetic-mean normalisation, expected MI under the
  permutation model) between k-means clusters of the L2-normalised target features (k = number of
  classes; scikit-learn's ``KMeans``: greedy k-means++ seeding, one initialisation, Lloyd iterations)
  and the predicted classes (scikit-learn's ``adjusted_mutual_info_score``)
* source accuracy: accuracy on the held-out source split
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _entropy_rows(p: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return -(p * (p + eps).log()).sum(-1)


def entropy_score(logits: torch.Tensor) -> float:
    return float(-_entropy_rows(logits.float().softmax(-1)).mean())


def im_score(logits: torch.Tensor) -> float:
    p = logits.float().softmax(-1)
    return float(_entropy_rows(p.mean(0)) - _entropy_rows(p).mean())


def snd_score(x: torch.Tensor, tau: float = 0.05, softmax_input: bool = True) -> float:
    """``x``: logits (softmaxed first when ``softmax_input``) or features."""
    x = x.float().softmax(-1) if softmax_input else x.float()
    x = F.normalize(x, dim=-1)
    sim = x @ x.t() / tau
    sim.fill_diagonal_(float("-inf"))
    return float(_entropy_rows(sim.softmax(-1)).mean())


def bnm_score(logits: torch.Tensor) -> float:
    p = logits.float().softmax(-1)
    return float(torch.linalg.svdvals(p).sum() / len(p))


def source_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1) == labels).float().mean())


def domain_probabilities(source: torch.Tensor, target: torch.Tensor, query: torch.Tensor, l2: float = 1e-3,
                         steps: int = 200) -> torch.Tensor:
    """``P(target | x)`` for ``query`` rows from an L2-regularised logistic regression (LBFGS) that
    separates ``source`` (label 0) from ``target`` (label 1) features, standardised on their union.
    Fits with gradients on even when called under ``no_grad`` / ``inference_mode`` (evaluation loops)."""
    with torch.inference_mode(False), torch.enable_grad():
        return _fit_domain_classifier(source.clone(), target.clone(), query.clone(), l2, steps)


def _fit_domain_classifier(source, target, query, l2, steps):
    x = torch.cat([source, target]).double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    x = (x - mean) / std
    y = torch.cat([torch.zeros(len(source)), torch.ones(len(target))]).double()
    w = torch.zeros(x.shape[1], dtype=torch.double, requires_grad=True)
    b = torch.zeros((), dtype=torch.double, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return torch.sigmoid(((query.double() - mean) / std) @ w + b).float()


def dev_score(source_train_features: torch.Tensor, target_features: torch.Tensor, source_val_features: torch.Tensor,
              source_val_logits: torch.Tensor, source_val_labels: torch.Tensor) -> float:
    """``-DEV risk`` (see the module docstring)."""
    p_target = domain_probabilities(source_train_features, target_features, source_val_features).clamp(1e-6, 1 - 1e-6)
    ratio = len(source_train_features) / len(target_features)
    w = ratio * p_target / (1 - p_target)
    loss = F.cross_entropy(source_val_logits.float(), source_val_labels, reduction="none")
    weighted = w * loss
    var_w = w.var(unbiased=True)
    eta = 0.0 if var_w == 0 else float(-torch.cov(torch.stack([weighted, w]))[0, 1] / var_w)
    return float(-(weighted.mean() + eta * w.mean() - eta))


def class_ami_score(features: torch.Tensor, logits: torch.Tensor, seed: int = 0) -> float:
    """ClassAMI (see the module docstring); ``seed`` seeds the k-means++ initialisation, so every process
    under DDP, holding the same gathered rows, gets the same value. Fewer rows than classes: as many
    clusters as rows."""
    from sklearn.cluster import KMeans   # imported here: scikit-learn costs ~0.4 s to import, and only this score needs it
    from sklearn.metrics import adjusted_mutual_info_score
    from threadpoolctl import threadpool_limits

    x = F.normalize(features.detach().float().cpu(), dim=-1).numpy()
    # k-means' OpenMP threads follow torch's (under CPU DDP each process has its share of the cores)
    with threadpool_limits(limits=torch.get_num_threads()):
        clusters = KMeans(min(logits.shape[-1], len(x)), n_init=1, random_state=seed).fit(x).labels_
    return float(adjusted_mutual_info_score(clusters, logits.argmax(-1).cpu().numpy()))
