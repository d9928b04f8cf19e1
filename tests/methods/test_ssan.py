"""SSAN: two full-batch steps through Lightning against a plain-torch replay on deep copies, routing by
domain, the architecture, and the step's loss as the sum of its terms.

The replay is written from SSAN's original code as ``docs/methods/hda.md`` describes it, not from
the library's losses. Notation: source ``x_s`` (9-d) with labels ``y_s``, labelled
target ``x_l`` (5-d) with ``y_l``, unlabelled target ``x_u`` (5-d); ``f = E_domain(x)`` (one
projector per domain, L2-normalised output), ``z = C(f)``.

    L = CE(z_s, y_s) + L_ISC + gamma L_D + beta L_ESA
      L_ISC = (1 - alpha) CE(z_l, y_l) + alpha sum_k mean_{j: y_l,j = k} -sum_c q_k[c] log(softmax(z_l,j)[c] + 1e-5),
              q_k = mean_{i: y_s,i = k} softmax(z_s,i / T)   (q NOT detached)
      L_D   = BCE(D(R([f_s; f_l; f_u])), [1]*n_s + [0]*(n_l + n_u)), R = gradient reversal at the
              DANN-sigmoid coefficient of the step
      L_ESA = sum_k ||mu_s^k - mu_t^k||^2 [+ ||mu_s^k - mu_st^k||^2 + ||mu_t^k - mu_st^k||^2 (three)]
              target of class k: labelled of class k + unlabelled with argmax z_u = k whose geometric
              label (nearest prototype over source + labelled target) agrees ("None": all unlabelled)

The replay runs two full-batch steps (the GRL coefficient and the selection change between them, and
the second step uses the nesterov momentum buffer). The unit tests below it use ``UNIT_C`` classes.
"""

import copy
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lightning_da.methods import SSAN, HDANet
from step_replay import OneBatchData, assert_close_logs, assert_same_state, reversed_grad, run_one_batch
from step_replay.hda import (C, D_COMMON, D_S, D_T, LR, assert_logged_keys, hda_batch, hda_sgd, isc_reference,
                             sgd_factory, stepwise_result)


# ---------------------------------------------------------------------------------------- whole steps
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
    opt = hda_sgd(groups)
    history = [ssan_replay_step(ref, opt, batch, t, h) for t in range(steps)]
    ref.grl.step = steps - 1  # the GRL's counter follows global_step at the start of each batch
    return ref, history


SSAN_H = dict(alpha=0.3, beta=0.5, gamma=0.7, temperature=3.0)
SSAN_LR_MULT = {"backbone": 0.5, "classifier": 1.5, "discriminator": 2.5}


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


# ---------------------------------------------------------------------------------------- units
UNIT_C = 4  # the unit tests' number of classes (the whole-step test above uses step_replay.hda.C = 3)


def hda_model(cls=SSAN, dims=None, **kwargs):
    return cls(dims or {"source": 6, "target": 6}, UNIT_C, optimizer=partial(torch.optim.SGD, lr=0.1), **kwargs)


def test_routing_by_domain_when_dimensions_are_equal():
    model = hda_model()
    x = torch.randn(8, 6)
    f_src, f_tgt = model.backbone(x, "source"), model.backbone(x, "target")
    assert not torch.allclose(f_src, f_tgt)
    assert torch.allclose(model(x), model.classifier(f_tgt))  # evaluation classifies target rows
    f_src.sum().backward()
    grads = {n: p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.backbone.named_parameters()}
    assert all(v for n, v in grads.items() if ".source." in n) and not any(v for n, v in grads.items() if ".target." in n)
    with pytest.raises(ValueError, match="target rows are 5-d but the target projector takes 7-d"):
        hda_model(dims={"source": 7, "target": 7}).backbone(torch.randn(2, 5))


def test_architecture_and_init_follow_ssan():
    model = hda_model(dims={"source": 800, "target": 4096})
    src, tgt = model.backbone.projectors["source"], model.backbone.projectors["target"]
    assert [m.out_features for m in src if isinstance(m, torch.nn.Linear)] == [528, 256]
    assert [m.out_features for m in tgt if isinstance(m, torch.nn.Linear)] == [2176, 256]
    assert isinstance(model.classifier[1], torch.nn.LeakyReLU) and model.classifier[1].negative_slope == 0.2
    w = tgt[0].weight.detach()
    assert abs(float(w.std()) - 0.01) < 5e-4 and abs(float(w.mean())) < 1e-4
    f = model.backbone(torch.rand(3, 4096))
    assert torch.allclose(f.norm(dim=1), torch.ones(3), atol=1e-5)
    with pytest.raises(ValueError, match="takes no backbone"):
        SSAN({"source": 2, "target": 3}, UNIT_C, optimizer=None, backbone=torch.nn.Identity())


def test_ssan_step_loss_is_the_sum_of_its_terms():
    torch.manual_seed(0)
    model = hda_model(dims={"source": 6, "target": 9})
    g = torch.Generator().manual_seed(0)
    batch = {"source": (torch.randn(20, 6, generator=g), torch.arange(20) % UNIT_C),
             "target_labeled": (torch.randn(8, 9, generator=g), torch.arange(8) % UNIT_C),
             "target": (torch.randn(12, 9, generator=g), torch.arange(12))}
    out = model.forward_hda(batch)
    loss, logs = model.hda_loss(out)
    expected = (F.cross_entropy(out["z_s"], out["y_s"]) + isc_reference(out["z_s"], out["y_s"], out["z_l"], out["y_l"], 0.1, 5.0)
                + 0.1 * F.binary_cross_entropy(torch.sigmoid(model.discriminator(torch.cat([out["f_s"], out["f_l"], out["f_u"]]))),
                                               torch.tensor([1.0] * 20 + [0.0] * 20))
                + 0.004 * logs["train/loss_esa"])
    assert torch.allclose(loss, expected, atol=1e-5)
    # the alignment-free baseline: CE(source) + CE(labelled target)
    base = hda_model(HDANet, dims={"source": 6, "target": 9})
    out = base.forward_hda(batch)
    assert torch.allclose(base.hda_loss(out)[0], F.cross_entropy(out["z_s"], out["y_s"]) + F.cross_entropy(out["z_l"], out["y_l"]))
