"""Whole-step tests of SourceOnly, CDAN / CDAN+E and FixMatch: one batch through Lightning against a
plain-torch replay on deep copies of the modules taken before the step.

The replays are written from the papers / original code, not from the library's losses:

* SourceOnly: ``L = CE(C(f_s), y_s)``, only the source forwarded (BN statistics of the source
  alone); with ``forward_target`` the batch ``[x_s; x_t]`` goes through in one call and the extra
  terms act on the target logits.
* CDAN (Long et al. 2018, ``loss.py`` of the CDAN / RN code): the discriminator sees
  ``R(g (outer) f)`` (``g`` the detached softmax) or the randomized map
  ``R((f R_f) * (g R_g) / sqrt(d))``; ``L_CDAN = mean BCE(D, d)`` with source 1, target 0. CDAN+E
  weights each row by ``w = 1 + exp(-H(p))`` whose gradient through ``H`` is reversed and scaled by
  the GRL coefficient, normalised within source and within target and then by the total.
  ``L = CE + trade_off * L_CDAN + sum_k w_k L_k(z_t)``.
* FixMatch (Sohn et al. 2020, TLlib's ConfidenceBasedSelfTrainingLoss): pseudo labels from the weak
  view (``[x_s; x_weak]`` forwarded in train mode without gradient, which moves the BatchNorm
  running statistics too), ``L = CE + trade_off * mean_i 1[max p_i(weak) > tau] CE(z_i(strong),
  y_hat_i) + sum_k w_k L_k(z_strong)`` (``>=`` when not strict).

Every test uses SGD with momentum and weight decay, per-module learning-rate multipliers and the
``inv`` schedule, and compares every logged term, the whole state_dict, and the optimiser's state
(momentum buffers, learning rates after the scheduler step).
"""

import copy
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lightning_da.methods import CDAN, FixMatch, SourceOnly
from lightning_da.optim import inv_schedule
from step_replay import TinyBackbone, assert_close_logs, assert_same_state, run_one_batch

LR, MOMENTUM, WD = 0.1, 0.9, 1e-3
GAMMA, POWER = 0.5, 0.75
BOTTLENECK = {"dim": 5, "batch_norm": True, "relu": True, "dropout": 0.0}
DISCRIMINATOR = {"hidden": 4, "num_hidden": 1, "batch_norm": True, "dropout": 0.0}
SOURCE_LABELS = torch.tensor([0, 1, 2, 1, 0])


# ---------------------------------------------------------------------------- plain-torch pieces
def reversed_grad(x: torch.Tensor, coeff: float) -> torch.Tensor:
    """Identity forward, gradient times -coeff backward."""
    return (1 + coeff) * x.detach() - coeff * x


def row_entropy(z: torch.Tensor) -> torch.Tensor:
    p = z.softmax(1)
    return -(p * torch.log(p + 1e-5)).sum(1)


def mcc(z: torch.Tensor, t: float = 2.5) -> torch.Tensor:
    """Minimum class confusion as the original MCC code (column normalisation by broadcasting)."""
    b, c = z.shape
    p = (z / t).softmax(1)
    w = 1 + torch.exp(-(-(p * torch.log(p + 1e-5)).sum(1))).detach()
    w = b * w / w.sum()
    cov = (p * w[:, None]).t() @ p
    cov = cov / cov.sum(1)
    return (cov.sum() - cov.trace()) / c


def bnm(z: torch.Tensor) -> torch.Tensor:
    """Batch nuclear-norm maximisation as its official code: -mean singular value of P."""
    return -torch.linalg.svdvals(z.softmax(1)).mean()


def forward(ref, x):
    f = ref.bottleneck(ref.backbone(x))
    return f, ref.classifier(f)


def replay_step(ref, loss, lr_mult: dict[str, float], names: list[str]):
    """SGD (momentum, weight decay, per-module lr) on ``ref`` and the inv schedule's first step."""
    groups = [{"params": list(getattr(ref, n).parameters()), "lr": LR * lr_mult.get(n, 1.0)} for n in names]
    opt = torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, weight_decay=WD)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: (1 + GAMMA * i) ** (-POWER))
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return opt


def assert_same_optimizer(model, ref_opt) -> None:
    """The method's (only) optimiser has the replay's groups, lrs after the schedule step, and
    momentum buffers (i.e. the same first-step gradients plus weight decay)."""
    opts = model.trainer.optimizers
    assert len(opts) == 1, f"expected one optimiser, got {len(opts)}"
    got = opts[0]
    assert len(got.param_groups) == len(ref_opt.param_groups)
    for i, (ga, gb) in enumerate(zip(got.param_groups, ref_opt.param_groups)):
        assert len(ga["params"]) == len(gb["params"]), f"group {i}: {len(ga['params'])} vs {len(gb['params'])} params"
        assert ga["lr"] == pytest.approx(gb["lr"], rel=1e-12), f"group {i} lr: {ga['lr']} vs {gb['lr']}"
        assert ga["momentum"] == MOMENTUM and ga["weight_decay"] == WD
        for pa, pb in zip(ga["params"], gb["params"]):
            assert pa.shape == pb.shape
            torch.testing.assert_close(got.state[pa]["momentum_buffer"], ref_opt.state[pb]["momentum_buffer"],
                                       rtol=1e-5, atol=1e-6)


def make_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(5, 6, generator=g)
    xt = torch.randn(7, 6, generator=g) * 1.5 + 0.5  # different size and contents
    return xs, xt, g


def optimizer():
    return partial(torch.optim.SGD, lr=LR, momentum=MOMENTUM, weight_decay=WD)


def scheduler():
    return partial(inv_schedule, gamma=GAMMA, power=POWER)


# ---------------------------------------------------------------------------- SourceOnly
def test_source_only_step_matches_replay():
    """Default: only the source is forwarded (BN statistics from the source alone), L = CE."""
    torch.manual_seed(0)
    lr_mult = {"backbone": 0.5, "classifier": 3.0}
    model = SourceOnly(TinyBackbone(), 3, optimizer(), scheduler(), bottleneck=BOTTLENECK, lr_mult=lr_mult)
    ref = copy.deepcopy(model)
    xs, xt, _ = make_batch()
    logged = run_one_batch(model, {"source": (xs, SOURCE_LABELS), "target": (xt, torch.arange(7))})

    ref.train()
    _, z = forward(ref, xs)
    loss = F.cross_entropy(z, SOURCE_LABELS)
    opt = replay_step(ref, loss, lr_mult, ["backbone", "bottleneck", "classifier"])

    assert_close_logs(logged, {"train/loss": loss, "train/loss_cls": loss, "train/loss_transfer": 0.0,
                               "train/source_acc": (z.argmax(1) == SOURCE_LABELS).float().mean()})
    assert_same_state(model, ref)
    assert_same_optimizer(model, opt)


def test_source_only_forward_target_extra_losses_match_replay():
    """``forward_target``: ``[x_s; x_t]`` in one call (BN statistics of both), the extra terms on the
    target logits with their own weights."""
    torch.manual_seed(0)
    lr_mult = {"bottleneck": 2.0, "classifier": 0.25}
    w_ent, w_mcc = 0.3, 0.2
    model = SourceOnly(TinyBackbone(), 3, optimizer(), scheduler(), bottleneck=BOTTLENECK, lr_mult=lr_mult,
                       forward_target=True, extra_losses={"entropy": w_ent, "mcc": w_mcc})
    ref = copy.deepcopy(model)
    xs, xt, _ = make_batch()
    logged = run_one_batch(model, {"source": (xs, SOURCE_LABELS), "target": (xt, torch.arange(7))})

    ref.train()
    ns = len(xs)
    _, z = forward(ref, torch.cat([xs, xt]))
    loss_cls = F.cross_entropy(z[:ns], SOURCE_LABELS)
    ent, conf = row_entropy(z[ns:]).mean(), mcc(z[ns:])
    loss = loss_cls + w_ent * ent + w_mcc * conf
    opt = replay_step(ref, loss, lr_mult, ["backbone", "bottleneck", "classifier"])

    assert_close_logs(logged, {"train/loss": loss, "train/loss_cls": loss_cls, "train/loss_transfer": 0.0,
                               "train/loss_entropy": ent, "train/loss_mcc": conf,
                               "train/source_acc": (z[:ns].argmax(1) == SOURCE_LABELS).float().mean()})
    assert_same_state(model, ref)
    assert_same_optimizer(model, opt)


# ---------------------------------------------------------------------------- CDAN / CDAN+E
@pytest.mark.parametrize("entropy_conditioning", [False, True], ids=["cdan", "cdan_e"])
@pytest.mark.parametrize("randomized", [False, True], ids=["multilinear", "randomized"])
def test_cdan_step_matches_replay(entropy_conditioning, randomized):
    torch.manual_seed(0)
    coeff, trade_off, w_ent, w_mcc, rdim = 0.3, 0.7, 0.15, 0.25, 6
    lr_mult = {"backbone": 0.5, "classifier": 1.5, "discriminator": 2.0}
    model = CDAN(TinyBackbone(), 3, optimizer(), scheduler(), bottleneck=BOTTLENECK, discriminator=DISCRIMINATOR,
                 grl={"alpha": 10.0, "max_iters": 100, "lo": coeff}, trade_off=trade_off, lr_mult=lr_mult,
                 extra_losses={"entropy": w_ent, "mcc": w_mcc}, entropy_conditioning=entropy_conditioning,
                 randomized=randomized, randomized_dim=rdim)
    ref = copy.deepcopy(model)
    xs, xt, _ = make_batch()
    logged = run_one_batch(model, {"source": (xs, SOURCE_LABELS), "target": (xt, torch.arange(7))})

    ref.train()
    ns, nt = len(xs), len(xt)
    f, z = forward(ref, torch.cat([xs, xt]))
    loss_cls = F.cross_entropy(z[:ns], SOURCE_LABELS)
    g = z.softmax(1).detach()
    if randomized:
        t = (f @ ref.random_f) * (g @ ref.random_g) / math.sqrt(rdim)
    else:
        t = torch.einsum("bc,bd->bcd", g, f).reshape(len(f), -1)  # g (outer) f, class-major
    d = ref.discriminator(reversed_grad(t, coeff)).reshape(-1)
    labels = torch.cat([torch.ones(ns), torch.zeros(nt)])
    bce = F.binary_cross_entropy_with_logits(d, labels, reduction="none")
    if entropy_conditioning:
        w = 1 + torch.exp(-reversed_grad(row_entropy(z), coeff))
        ws = torch.cat([w[:ns], torch.zeros(nt)])
        wt = torch.cat([torch.zeros(ns), w[ns:]])
        weight = ws / ws.sum().detach() + wt / wt.sum().detach()
        loss_cdan = (weight * bce).sum() / weight.sum().detach()
    else:
        loss_cdan = bce.mean()
    ent, conf = row_entropy(z[ns:]).mean(), mcc(z[ns:])
    loss = loss_cls + trade_off * loss_cdan + w_ent * ent + w_mcc * conf
    opt = replay_step(ref, loss, lr_mult, ["backbone", "bottleneck", "classifier", "discriminator"])

    assert_close_logs(logged, {"train/loss": loss, "train/loss_cls": loss_cls, "train/loss_transfer": loss_cdan,
                               "train/loss_entropy": ent, "train/loss_mcc": conf, "train/grl_coeff": coeff,
                               "train/source_acc": (z[:ns].argmax(1) == SOURCE_LABELS).float().mean()})
    assert_same_state(model, ref)
    assert_same_optimizer(model, opt)
    if randomized:  # the projections are fixed buffers, not trained
        assert set(model.state_dict()) >= {"random_f", "random_g"}
        assert not any(n.startswith("random_") for n, _ in model.named_parameters())


# ---------------------------------------------------------------------------- FixMatch
def fixmatch_batch():
    xs, x_weak, g = make_batch(1)
    x_strong = x_weak * 0.6 + torch.randn(7, 6, generator=g) * 0.8  # a distinct view of the same rows
    return xs, x_weak, x_strong


def build_fixmatch(threshold: float, strict: bool, trade_off: float, lr_mult: dict, extra: dict) -> FixMatch:
    torch.manual_seed(0)
    return FixMatch(TinyBackbone(), 3, optimizer(), scheduler(), bottleneck=BOTTLENECK, lr_mult=lr_mult,
                    extra_losses=extra, trade_off=trade_off, threshold=threshold, strict=strict)


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "non_strict"])
def test_fixmatch_step_matches_replay(strict):
    trade_off, w_ent, w_bnm = 0.6, 0.35, 0.15
    lr_mult = {"backbone": 0.5, "bottleneck": 1.5, "classifier": 2.5}
    extra = {"entropy": w_ent, "bnm": w_bnm}
    xs, x_weak, x_strong = fixmatch_batch()
    ns, nt = len(xs), len(x_weak)

    # the threshold is set exactly at one weak-view confidence (the 4th highest), so strict (>) and
    # non-strict (>=) masks differ on that row
    probe = copy.deepcopy(build_fixmatch(0.5, strict, trade_off, lr_mult, extra)).train()
    with torch.no_grad():
        conf0 = forward(probe, torch.cat([xs, x_weak]))[1][ns:].softmax(1).max(1).values
    tau = float(conf0.sort(descending=True).values[3])

    model = build_fixmatch(tau, strict, trade_off, lr_mult, extra)
    ref = copy.deepcopy(model)
    logged = run_one_batch(model, {"source": (xs, SOURCE_LABELS), "target": ((x_weak, x_strong), torch.arange(nt))})

    ref.train()
    with torch.no_grad():  # the weak pass, in train mode: it moves the BN running statistics too
        p_weak = forward(ref, torch.cat([xs, x_weak]))[1][ns:].softmax(1)
    _, z = forward(ref, torch.cat([xs, x_strong]))
    loss_cls = F.cross_entropy(z[:ns], SOURCE_LABELS)
    conf, pseudo = p_weak.max(1)
    mask = conf > tau if strict else conf >= tau
    assert 0 < int(mask.sum()) < nt, f"the mask must be mixed on this batch: {mask.tolist()}"
    assert int(mask.sum()) == (3 if strict else 4)
    # the views disagree, so pseudo labels or masks from the strong view would show
    assert not torch.equal(pseudo, z[ns:].argmax(1))
    z_t = z[ns:]
    loss_fm = (F.cross_entropy(z_t, pseudo, reduction="none") * mask.float()).sum() / nt
    ent, nuc = row_entropy(z_t).mean(), bnm(z_t)
    loss = loss_cls + trade_off * loss_fm + w_ent * ent + w_bnm * nuc
    opt = replay_step(ref, loss, lr_mult, ["backbone", "bottleneck", "classifier"])

    assert_close_logs(logged, {"train/loss": loss, "train/loss_cls": loss_cls, "train/loss_transfer": loss_fm,
                               "train/loss_entropy": ent, "train/loss_bnm": nuc,
                               "train/pseudo_label_ratio": mask.float().mean(),
                               "train/source_acc": (z[:ns].argmax(1) == SOURCE_LABELS).float().mean()})
    assert_same_state(model, ref)
    assert_same_optimizer(model, opt)
