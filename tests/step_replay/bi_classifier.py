"""The replay of one batch of the bi-classifier methods MCD and CGDM (all optimiser steps of that
batch: A, B, then C ``num_k`` times), shared by their whole-step tests (tests/methods/test_mcd.py,
tests/methods/test_cgdm.py).

The replay is written from the papers and the original code (``docs/methods/bi_classifier.md``),
not from the library: G = backbone + bottleneck, heads F1, F2, ``d(p, q) = mean |p - q|``
on the target softmaxes,

* A (G, F1, F2): ``CE_s(F1) + CE_s(F2) [+ CGDM terms] + extra(F1_t) + extra(F2_t)``
* B (F1, F2):    ``CE_s(F1) + CE_s(F2) - w_dis d(F1_t, F2_t) [+ w_ent_b Ent] + extra(F1_t) + extra(F2_t)``, G without gradient
* C (G) x num_k: ``w_dis d(F1_t, F2_t) [+ w_ent_c Ent + w_gd L_GD]``

with G's optimiser (SGD, no momentum) and the heads' optimiser (SGD with momentum) configured
differently, per-module learning-rate multipliers and the ``inv`` schedule. CGDM runs with its
pseudo labels active from epoch 0: its test clusters the whole target train set itself (SHOT's
weighted-centroid clustering, eval mode) and the replay adds the weighted CE and the second-order
gradient discrepancy.

The tests run in float64. CGDM's heads (as the original's ResClassifier) put a BatchNorm after their
first Linear layer, so that layer's bias has a gradient that is zero in exact arithmetic and rounding
noise in floating point; L_GD takes the cosine of two such noise vectors. In float32 the noise
(~1e-8) is at the scale of the cosine's eps and the term is a random number in [0, 2] that any
reordering of the arithmetic changes (measured: L_GD 1.18 vs 1.10 between two exact-arithmetic-equal
computations), so no replay can match to a tolerance. In float64 the noise (~1e-17) is far below the
eps and the term is 1 - O(1e-18) everywhere, and the replay matches to ~1e-15.
"""

from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lightning_da.optim import inv_schedule
from step_replay import BOTTLENECK, assert_close_logs, row_entropy


EPS = 1e-5  # the entropy eps of the originals (inside the logs)
RTOL, ATOL = 1e-9, 1e-11  # float64 (see the module docstring)
NUM_CLASSES = 3
LR_F, MOMENTUM_F, WD_F = 0.1, 0.9, 1e-3   # heads' optimiser (`optimizer`)
LR_G, WD_G = 0.05, 5e-4                    # generator's optimiser (`generator_optimizer`), no momentum
LR_MULT = {"backbone": 0.5, "bottleneck": 0.8, "classifier": 1.2, "classifier2": 1.5}
GAMMA, POWER = 0.5, 0.6                    # inv schedule: lr_i = lr_0 (1 + gamma i)^-power
EXTRA = {"entropy": 0.3, "im": 0.2}
HEAD = {"hidden": [6], "batch_norm": True, "dropout": 0.0}


# ---------------------------------------------------------------------------------------------- data
def target_set(seed: int = 3, n: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 6, generator=g) * 1.5 + 0.5).double()  # shifted and scaled against the source


def subset_batch(seed: int = 0):
    """5 source rows, 7 target rows (a subset of the 10-sample target train set, not in order)."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(5, 6, generator=g).double()
    idx = torch.tensor([7, 2, 9, 0, 5, 3, 8])
    return {"source": (xs, torch.tensor([0, 1, 2, 1, 0])), "target": (target_set()[idx], idx)}


def target_pass():
    """The whole target train set as (x, idx) batches, indices shuffled."""
    xt, order = target_set(), torch.tensor([4, 8, 1, 6, 0, 9, 3, 7, 2, 5])
    return [(xt[order[:4]], order[:4]), (xt[order[4:]], order[4:])]


def common_kwargs(train_bottleneck=True, **kw):
    lr_mult = {k: v for k, v in LR_MULT.items() if train_bottleneck or k != "bottleneck"}  # no multiplier for a frozen module
    return dict(optimizer=partial(torch.optim.SGD, lr=LR_F, momentum=MOMENTUM_F, weight_decay=WD_F),
                generator_optimizer=partial(torch.optim.SGD, lr=LR_G, weight_decay=WD_G),
                scheduler=partial(inv_schedule, gamma=GAMMA, power=POWER),
                bottleneck=BOTTLENECK, head=HEAD, lr_mult=lr_mult, **kw)


# ---------------------------------------------------------------------------------------------- plain-torch pieces
def discrepancy(z1, z2):
    return (z1.softmax(1) - z2.softmax(1)).abs().mean()


def extra_terms(z):
    """The configured extra_losses on target logits: entropy and information maximisation."""
    p = z.softmax(1)
    h = row_entropy(z).mean()
    p_bar = p.mean(0)
    im = h + (p_bar * torch.log(p_bar + EPS)).sum()
    return EXTRA["entropy"] * h + EXTRA["im"] * im


def cgdm_ent(z, mode):
    h = row_entropy(z).mean()
    if mode == "conditional":
        return h
    p_bar = z.softmax(1).mean(0)
    return h + ((p_bar + EPS) * torch.log(p_bar + EPS)).sum()


def wce(z, y, batch_factor, detach_weights):
    """CGDM's weighted CE: w_i = 1 + exp(-H_i) with gradient (unless detached), over the constant sum."""
    w = 1 + torch.exp(-row_entropy(z.detach() if detach_weights else z))
    w = w / w.sum().detach()
    weighted = w * F.cross_entropy(z, y, reduction="none")
    return weighted.mean() if batch_factor else weighted.sum()


def head_gradient_discrepancy(loss_s, loss_t, head):
    """mean over the head's parameter tensors of 1 - cos(g_t, g_s): per row for matrices, whole vector
    for vectors; both gradients with create_graph so the result reaches G."""
    params = list(head.parameters())
    g_s = torch.autograd.grad(loss_s, params, create_graph=True)
    g_t = torch.autograd.grad(loss_t, params, create_graph=True)
    terms = []
    for a, b in zip(g_s, g_t):
        if a.dim() >= 2:
            cos = F.cosine_similarity(b.flatten(1), a.flatten(1), dim=1).mean()
        else:
            cos = F.cosine_similarity(b, a, dim=0)
        terms.append(1 - cos)
    return torch.stack(terms).mean()


# ---------------------------------------------------------------------------------------------- the replay
def heads_forward(ref, xs, xt, domain_forward, generator_grad=True):
    """Logits of both heads on [source; target] (xs or xt may be None): one call of G, F1, F2 on the
    joint batch, or with "separate" one call per domain (source first)."""
    xs_list = [x for x in (xs, xt) if x is not None]
    with torch.set_grad_enabled(generator_grad):
        feats = ([ref.bottleneck(ref.backbone(torch.cat(xs_list)))] if domain_forward == "joint"
                 else [ref.bottleneck(ref.backbone(x)) for x in xs_list])
    z1 = torch.cat([ref.classifier(f) for f in feats])
    z2 = torch.cat([ref.classifier2(f) for f in feats])
    return z1, z2


def replay(ref, b, *, domain_forward, num_k, w_dis, extra, cgdm=None, pseudo=None):
    """One batch of MCD (cgdm=None) or CGDM (cgdm: its weights and flags; pseudo: per-sample labels)
    on ``ref`` in place. Returns the logged terms."""
    (xs, ys), (xt, idx) = b["source"], b["target"]
    ns = len(ys)
    ref.train()
    g_groups = [{"params": list(ref.backbone.parameters()), "lr": LR_G * LR_MULT["backbone"]}]
    if cgdm is None or cgdm["train_bottleneck"]:
        g_groups.append({"params": list(ref.bottleneck.parameters()), "lr": LR_G * LR_MULT["bottleneck"]})
    opt_g = torch.optim.SGD(g_groups, lr=LR_G, momentum=0.0, weight_decay=WD_G)
    opt_f = torch.optim.SGD([{"params": list(ref.classifier.parameters()), "lr": LR_F * LR_MULT["classifier"]},
                             {"params": list(ref.classifier2.parameters()), "lr": LR_F * LR_MULT["classifier2"]}],
                            lr=LR_F, momentum=MOMENTUM_F, weight_decay=WD_F)
    # which domains each step forwards with domain_forward="separate" (MCD: A source, B both, C target;
    # A also the target when extra losses act on it; CGDM: both everywhere)
    if domain_forward == "joint" or cgdm is not None:
        uses = {"A": (True, True), "B": (True, True), "C": (True, True)}
    else:
        uses = {"A": (True, bool(extra)), "B": (True, True), "C": (False, True)}

    def fwd(step, generator_grad=True):
        use_s, use_t = uses[step]
        z1, z2 = heads_forward(ref, xs if use_s else None, xt if use_t else None, domain_forward, generator_grad)
        return z1, z2, (ns if use_s else 0)

    y_hat = pseudo[idx] if pseudo is not None else None
    logs = {}

    def ent_term(step, z1t, z2t):
        e = cgdm_ent(z1t, cgdm["entropy_mode"]) + cgdm_ent(z2t, cgdm["entropy_mode"])
        logs["train/loss_entropy"] = e.detach()
        return cgdm["w_ent_" + step.lower()] * e

    def my_wce(z):
        return wce(z, y_hat, cgdm["wce_batch_factor"], cgdm["wce_detach_weights"])

    # ---- A: G, F1, F2
    z1, z2, n = fwd("A")
    loss_cls = F.cross_entropy(z1[:n], ys) + F.cross_entropy(z2[:n], ys)
    loss = loss_cls
    if cgdm is not None:
        loss = loss + ent_term("A", z1[n:], z2[n:])
        pseudo_ce = my_wce(z1[n:]) + my_wce(z2[n:])
        logs["train/loss_pseudo"] = pseudo_ce.detach()
        loss = loss + cgdm["w_pseudo"] * pseudo_ce
    if extra:
        loss = loss + extra_terms(z1[n:]) + extra_terms(z2[n:])
    opt_g.zero_grad()
    opt_f.zero_grad()
    loss.backward()
    opt_g.step()
    opt_f.step()
    logs["train/loss_cls"] = loss_cls.detach()

    # ---- B: F1, F2 only (G forwarded without gradient)
    z1, z2, n = fwd("B", generator_grad=False)
    disc = discrepancy(z1[n:], z2[n:])
    loss = F.cross_entropy(z1[:n], ys) + F.cross_entropy(z2[:n], ys) - w_dis * disc
    if cgdm is not None:
        loss = loss + ent_term("B", z1[n:], z2[n:])
    if extra:  # TLlib's MCD: the class-balance term in steps A and B
        loss = loss + extra_terms(z1[n:]) + extra_terms(z2[n:])
    opt_f.zero_grad()
    loss.backward()
    opt_f.step()
    logs["train/discrepancy_heads"] = disc.detach()

    # ---- C: G only, num_k times
    for _ in range(num_k):
        z1, z2, n = fwd("C")
        disc = discrepancy(z1[n:], z2[n:])
        loss = w_dis * disc
        if cgdm is not None:
            loss = loss + ent_term("C", z1[n:], z2[n:])
            gd = 0.5 * (head_gradient_discrepancy(F.cross_entropy(z1[:n], ys), my_wce(z1[n:]), ref.classifier)
                        + head_gradient_discrepancy(F.cross_entropy(z2[:n], ys), my_wce(z2[n:]), ref.classifier2))
            logs["train/loss_gd"] = gd.detach()
            loss = loss + cgdm["w_gd"] * gd
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
    logs["train/loss_transfer"] = disc.detach()
    logs["train/loss"] = logs["train/loss_cls"] + logs["train/loss_transfer"]
    return logs


# ---------------------------------------------------------------------------------------------- checks
def excess(model, ref, rtol=RTOL, atol=ATOL) -> float:
    """max over float state entries of |a - b| / (atol + rtol |b|): above 1 = outside the tolerance."""
    got, want = model.state_dict(), ref.state_dict()
    return max(float(((got[k] - want[k]).abs() / (atol + rtol * want[k].abs())).max())
               for k in want if torch.is_floating_point(want[k]))


def check_lrs_after_one_batch(model, train_bottleneck=True):
    """Both optimisers kept their groups' learning rates and the scheduler stepped once per batch."""
    opt_g, opt_f = model.trainer.optimizers
    decay = (1 + GAMMA) ** -POWER
    g_names = ["backbone", "bottleneck"] if train_bottleneck else ["backbone"]
    assert [grp["lr"] for grp in opt_g.param_groups] == pytest.approx([LR_G * LR_MULT[n] * decay for n in g_names])
    assert [grp["lr"] for grp in opt_f.param_groups] == pytest.approx(
        [LR_F * LR_MULT[n] * decay for n in ("classifier", "classifier2")])
    assert all(grp["momentum"] == 0.0 and grp["weight_decay"] == WD_G for grp in opt_g.param_groups)
    assert all(grp["momentum"] == MOMENTUM_F and grp["weight_decay"] == WD_F for grp in opt_f.param_groups)


def check_logs(logged, expected):
    assert_close_logs(logged, expected, rtol=RTOL, atol=ATOL)
    assert {k for k in logged if k.startswith("train/")} == set(expected), sorted(logged)
