"""Whole-step tests of the semi-supervised heterogeneous DA methods (SSAN, HDANet, TargetOnly): full
batches through a real Lightning Trainer against a plain-torch replay on deep copies.

The replay is written from SSAN's original code as ``docs/methods/hda.md`` describes it, not from
the library's losses. Notation: source ``x_s`` (9-d) with labels ``y_s``, labelled
target ``x_l`` (5-d) with ``y_l``, unlabelled target ``x_u`` (5-d); ``f = E_domain(x)`` (one
projector per domain, L2-normalised output), ``z = C(f)``.

    HDANet:     L = CE(z_s, y_s) + CE(z_l, y_l)
    TargetOnly: L = CE(z_l, y_l)     (optimiser: target projector and classifier only)
    SSAN:       L = CE(z_s, y_s) + L_ISC + gamma L_D + beta L_ESA
      L_ISC = (1 - alpha) CE(z_l, y_l) + alpha sum_k mean_{j: y_l,j = k} -sum_c q_k[c] log(softmax(z_l,j)[c] + 1e-5),
              q_k = mean_{i: y_s,i = k} softmax(z_s,i / T)   (q NOT detached)
      L_D   = BCE(D(R([f_s; f_l; f_u])), [1]*n_s + [0]*(n_l + n_u)), R = gradient reversal at the
              DANN-sigmoid coefficient of the step
      L_ESA = sum_k ||mu_s^k - mu_t^k||^2 [+ ||mu_s^k - mu_st^k||^2 + ||mu_t^k - mu_st^k||^2 (three)]
              target of class k: labelled of class k + unlabelled with argmax z_u = k whose geometric
              label (nearest prototype over source + labelled target) agrees ("None": all unlabelled)

SSAN runs two full-batch steps (the GRL coefficient and the selection change between them, and
the second step uses the nesterov momentum buffer).
"""

import copy
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lightning_da.callbacks import StepwiseTargetAccuracy
from lightning_da.methods import SSAN, HDANet, TargetOnly
from step_replay import OneBatchData, assert_close_logs, assert_same_state, run_one_batch

C, D_S, D_T, D_COMMON = 3, 9, 5, 6
LR, MOMENTUM, WD = 0.2, 0.9, 5e-3


def reversed_grad(x: torch.Tensor, coeff: float) -> torch.Tensor:
    """Identity forward, gradient times -coeff backward."""
    return (1 + coeff) * x.detach() - coeff * x


def hda_batch(seed: int = 0):
    """8 source rows (9-d), 5 labelled target rows (5-d), 7 unlabelled target rows (5-d, shifted and
    scaled); every class in source and labelled target, with unequal class counts."""
    g = torch.Generator().manual_seed(seed)
    xs = torch.randn(8, D_S, generator=g)
    xl = torch.randn(5, D_T, generator=g) * 1.5 + 0.5
    xu = torch.randn(7, D_T, generator=g) * 1.5 + 0.5
    ys = torch.tensor([0, 1, 2, 1, 0, 1, 1, 2])
    yl = torch.tensor([2, 0, 1, 2, 2])
    yu = torch.tensor([0, 1, 2, 2, 1, 0, 2])
    batch = {"source": (xs, ys), "target_labeled": (xl, yl), "target": (xu, torch.arange(7))}
    return batch, yu


def sgd(groups):
    return torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, weight_decay=WD, nesterov=True)


def stepwise_result(model):
    cbs = [c for c in model.trainer.callbacks if isinstance(c, StepwiseTargetAccuracy)]
    assert len(cbs) == 1
    return cbs[0].result()


def assert_logged_keys(logged, expected):
    """The method logs exactly these training scalars (nothing dropped, nothing unexpected)."""
    got = {k for k in logged if k.startswith("train/")}
    assert got == set(expected), f"logged {sorted(got)}, expected {sorted(expected)}"


# ---------------------------------------------------------------------------------------- SSAN
def grl_coeff(step, alpha=10.0, max_iters=100, lo=0.3, hi=1.0):
    return (hi - lo) * (2.0 / (1.0 + math.exp(-alpha * step / max_iters)) - 1.0) + lo


def geometric_labels(f_u, f_ref, y_ref, mode, step):
    """argmax_k of cos(f_u, c_k) (Cosine*) or -||f_u - c_k||^2 (Euclidean*), prototypes c_k = class
    means of f_ref; *_threshold: -1 where the best score is below the threshold."""
    f_u, f_ref = f_u.detach(), f_ref.detach()
    centers = torch.stack([f_ref[y_ref == k].mean(0) for k in range(C)])
    if mode.startswith("Cosine"):
        scores = torch.stack([F.cosine_similarity(f_u, centers[k].expand_as(f_u), dim=1) for k in range(C)], 1)
    else:
        scores = torch.stack([-((f_u - centers[k]) ** 2).sum(1) for k in range(C)], 1)
    best, label = scores.max(1)
    if mode == "Cosine_threshold":
        label = torch.where(best < 1.0 / (1.0 + math.exp(-0.8 * (step + 1))) - 0.01, -1, label)
    elif mode == "Euclidean_threshold":
        label = torch.where(best < 0.2, -1, label)
    return label


def ssan_replay_step(ref, opt, batch, step, h):
    """One SSAN step on ``ref``; returns the logs, the unlabelled logits and the selection mask."""
    (xs, ys), (xl, yl), (xu, _) = batch["source"], batch["target_labeled"], batch["target"]
    f_s = ref.backbone.projectors["source"](xs)
    f_l = ref.backbone.projectors["target"](xl)
    f_u = ref.backbone.projectors["target"](xu)
    z_s, z_l, z_u = ref.classifier(f_s), ref.classifier(f_l), ref.classifier(f_u)

    loss_s = F.cross_entropy(z_s, ys)
    # L_ISC
    hard = F.cross_entropy(z_l, yl)
    p_s = torch.softmax(z_s / h["temperature"], dim=1)
    p_l = torch.softmax(z_l, dim=1)
    soft = 0.0
    for k in range(C):
        q_k = p_s[ys == k].mean(0)  # not detached
        if (yl == k).any():
            soft = soft + (-(q_k * torch.log(p_l[yl == k] + 1e-5)).sum(1)).mean()
    loss_isc = (1 - h["alpha"]) * hard + h["alpha"] * soft
    # L_D
    coeff = grl_coeff(step)
    f_all = torch.cat([f_s, f_l, f_u])
    d = ref.discriminator(reversed_grad(f_all, coeff)).squeeze(-1)
    domain = torch.cat([torch.ones(len(f_s)), torch.zeros(len(f_l) + len(f_u))])
    loss_d = F.binary_cross_entropy_with_logits(d, domain)
    # L_ESA with the agreement selection
    y_net = z_u.detach().argmax(1)
    if h["combine_pred"] == "None":
        selected = torch.ones(len(xu), dtype=torch.bool)
    else:
        selected = y_net == geometric_labels(f_u, torch.cat([f_s, f_l]), torch.cat([ys, yl]), h["combine_pred"], step)
    f_t, y_t = torch.cat([f_l, f_u[selected]]), torch.cat([yl, y_net[selected]])
    loss_esa = 0.0
    for k in range(C):
        if not (ys == k).any() or not (y_t == k).any():
            continue
        mu_s, mu_t = f_s[ys == k].mean(0), f_t[y_t == k].mean(0)
        mu_st = torch.cat([f_s[ys == k], f_t[y_t == k]]).mean(0)
        loss_esa = loss_esa + ((mu_s - mu_t) ** 2).sum()
        if h["prototype"] == "three":
            loss_esa = loss_esa + ((mu_s - mu_st) ** 2).sum() + ((mu_t - mu_st) ** 2).sum()

    loss = loss_s + loss_isc + h["gamma"] * loss_d + h["beta"] * loss_esa
    opt.zero_grad()
    loss.backward()
    opt.step()
    logs = {"train/loss": loss, "train/loss_cls": loss_s, "train/loss_isc": loss_isc,
            "train/loss_isc_hard": (1 - h["alpha"]) * hard, "train/loss_isc_soft": h["alpha"] * soft,
            "train/grl_coeff": coeff, "train/loss_domain": loss_d, "train/loss_esa": loss_esa,
            "train/selected_fraction": selected.float().mean(),
            "train/source_acc": (z_s.argmax(1) == ys).float().mean()}
    return {k: float(torch.as_tensor(v).detach()) for k, v in logs.items()}, z_u.detach(), selected


def ssan_replay(model_before, batch, h, steps, lr_mult):
    ref = copy.deepcopy(model_before)
    ref.train()
    groups = [{"params": list(ref.backbone.parameters()), "lr": LR * lr_mult["backbone"]},
              {"params": list(ref.classifier.parameters()), "lr": LR * lr_mult["classifier"]},
              {"params": list(ref.discriminator.parameters()), "lr": LR * lr_mult["discriminator"]}]
    opt = sgd(groups)
    history = [ssan_replay_step(ref, opt, batch, t, h) for t in range(steps)]
    ref.grl.step = steps - 1  # the GRL's counter follows global_step at the start of each batch
    return ref, history


SSAN_H = dict(alpha=0.3, beta=0.5, gamma=0.7, temperature=3.0)
SSAN_LR_MULT = {"backbone": 0.5, "classifier": 1.5, "discriminator": 2.5}


#: the configured optimiser (a partial with ``lr`` in its keywords, as Hydra builds it)
sgd_factory = partial(torch.optim.SGD, lr=LR, momentum=MOMENTUM, weight_decay=WD, nesterov=True)


@pytest.mark.parametrize("prototype,combine_pred,init_std,layer,seed", [
    ("three", "Cosine", None, "double", 0),
    ("two", "None", None, "double", 0),
    ("three", "Euclidean", None, "single", 0),
    ("two", "Cosine_threshold", None, "double", 3),
    # SSAN's own N(0, 0.01^2) initialisation: the biases dominate, every unlabelled row gets the same
    # features, so the selection is all-or-nothing (with seed 11: none at step 0, all at step 1)
    ("three", "Cosine", 0.01, "double", 11),
])
def test_ssan_two_steps_match_replay(prototype, combine_pred, init_std, layer, seed):
    steps = 2
    torch.manual_seed(seed)
    model = SSAN({"source": D_S, "target": D_T}, C, optimizer=sgd_factory, d_common=D_COMMON, layer=layer,
                 init_std=init_std, lr_mult=SSAN_LR_MULT, prototype=prototype, combine_pred=combine_pred,
                 grl={"alpha": 10.0, "max_iters": 100, "lo": 0.3, "hi": 1.0, "auto_step": False}, **SSAN_H)
    before = copy.deepcopy(model)
    batch, yu = hda_batch(seed)
    logged = run_one_batch(model, data=OneBatchData(batch, eval_batch=(batch["target"][0], yu)), max_epochs=steps)

    h = dict(SSAN_H, prototype=prototype, combine_pred=combine_pred)
    ref, history = ssan_replay(before, batch, h, steps, SSAN_LR_MULT)
    last, _, _ = history[-1]
    assert_logged_keys(logged, last)
    assert_close_logs(logged, last)
    assert_same_state(model, ref)

    # the selection is exercised: some unlabelled samples in, some out (all in under "None")
    counts = [int(selected.sum()) for _, _, selected in history]
    if combine_pred == "None":
        assert counts == [len(yu)] * steps
    elif init_std is None:
        assert all(0 < n < len(yu) for n in counts), counts
    else:
        assert counts == [0, len(yu)], counts
    # the stepwise oracle reads the unlabelled-target logits of every step
    accs = [float((z_u.argmax(1) == yu).float().mean()) for _, z_u, _ in history]
    result = stepwise_result(model)
    assert result["val/target_acc"] == pytest.approx(max(accs)) and result["step"] == accs.index(max(accs))

    # the test is sensitive to each term: dropping it changes the weights well beyond the tolerance
    for name, off in [("soft", {"alpha": 0.0}), ("domain", {"gamma": 0.0}), ("esa", {"beta": 0.0}),
                      ("temperature", {"temperature": 1.0})]:
        other, _ = ssan_replay(before, batch, dict(h, **off), steps, SSAN_LR_MULT)
        diff = max((a - b).abs().max().item() for a, b in zip(other.state_dict().values(), ref.state_dict().values())
                   if isinstance(a, torch.Tensor) and a.is_floating_point())
        assert diff > 1e-4, f"the {name} term barely moves the weights ({diff:.2e})"


# ---------------------------------------------------------------------------------------- HDANet
def test_hda_net_step_matches_replay():
    torch.manual_seed(0)
    lr_mult = {"backbone": 0.5, "classifier": 1.5}
    model = HDANet({"source": D_S, "target": D_T}, C, optimizer=sgd_factory, d_common=D_COMMON, init_std=None,
                   lr_mult=lr_mult)
    before = copy.deepcopy(model)
    batch, yu = hda_batch(0)
    logged = run_one_batch(model, data=OneBatchData(batch, eval_batch=(batch["target"][0], yu)))

    (xs, ys), (xl, yl), (xu, _) = batch["source"], batch["target_labeled"], batch["target"]
    ref = copy.deepcopy(before)
    ref.train()
    z_s = ref.classifier(ref.backbone.projectors["source"](xs))
    z_l = ref.classifier(ref.backbone.projectors["target"](xl))
    z_u = ref.classifier(ref.backbone.projectors["target"](xu)).detach()
    loss_s, loss_l = F.cross_entropy(z_s, ys), F.cross_entropy(z_l, yl)
    loss = loss_s + loss_l
    opt = sgd([{"params": list(ref.backbone.parameters()), "lr": LR * 0.5},
               {"params": list(ref.classifier.parameters()), "lr": LR * 1.5}])
    opt.zero_grad()
    loss.backward()
    opt.step()

    expected = {"train/loss": loss, "train/loss_cls": loss_s, "train/loss_target_cls": loss_l,
                "train/source_acc": (z_s.argmax(1) == ys).float().mean()}
    assert_logged_keys(logged, expected)
    assert_close_logs(logged, expected)
    assert_same_state(model, ref)
    result = stepwise_result(model)
    assert result["val/target_acc"] == pytest.approx(float((z_u.argmax(1) == yu).float().mean())) and result["step"] == 0


# ---------------------------------------------------------------------------------------- TargetOnly
def test_target_only_step_matches_replay():
    torch.manual_seed(0)
    lr_mult = {"target_projector": 0.5, "classifier": 1.5}
    model = TargetOnly({"source": D_S, "target": D_T}, C, optimizer=sgd_factory, d_common=D_COMMON, init_std=None,
                       lr_mult=lr_mult)
    before = copy.deepcopy(model)
    batch, yu = hda_batch(0)
    logged = run_one_batch(model, data=OneBatchData(batch, eval_batch=(batch["target"][0], yu)))

    (xl, yl), (xu, _) = batch["target_labeled"], batch["target"]
    ref = copy.deepcopy(before)
    ref.train()
    target = ref.backbone.projectors["target"]
    z_l = ref.classifier(target(xl))
    z_u = ref.classifier(target(xu)).detach()
    loss = F.cross_entropy(z_l, yl)
    opt = sgd([{"params": list(target.parameters()), "lr": LR * 0.5},
               {"params": list(ref.classifier.parameters()), "lr": LR * 1.5}])
    opt.zero_grad()
    loss.backward()
    opt.step()

    expected = {"train/loss": loss, "train/loss_target_cls": loss}
    assert_logged_keys(logged, expected)
    assert_close_logs(logged, expected)
    assert_same_state(model, ref)
    # the source projector is left alone, weight decay included, and is not in the optimiser
    for k, v in before.backbone.projectors["source"].state_dict().items():
        assert torch.equal(model.backbone.projectors["source"].state_dict()[k], v), k
    optimised = {id(p) for g in model.trainer.optimizers[0].param_groups for p in g["params"]}
    assert not optimised & {id(p) for p in model.backbone.projectors["source"].parameters()}
    assert optimised == {id(p) for p in [*model.backbone.projectors["target"].parameters(), *model.classifier.parameters()]}
    result = stepwise_result(model)
    assert result["val/target_acc"] == pytest.approx(float((z_u.argmax(1) == yu).float().mean())) and result["step"] == 0
