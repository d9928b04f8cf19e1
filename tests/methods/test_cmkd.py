"""CMKD (+ RST, + FixMatch): whole steps against a plain-torch replay on deep copies, the loss against an
independent computation, a few steps on Office-Caltech10, and the experiment configs.

The CMKD replay is written from the VLP-UDA code (docs/methods/clip.md) in plain torch on
deep copies taken before the step: with ``p_h = softmax h(f(x_t))`` (student head) and
``p_g = softmax g(f(x_t))``, ``g(f) = s * normalize(f) @ T^T`` (zero-shot head on the trainable encoder),

    L = CE_ls(h(f(x_s)), y_s)
      + lambda1 * lamb_t * [ GI(p_h; alpha) + GI((p_h + sg(p_g)) / 2; 1 - alpha) ]
      + lambda2 * CE(g(f(x_s)), y_s) + lambda3 * lamb_t * GI(p_g; 1)
      [+ factor * (mean(mask_h * CE(h(f(x_strong)), yhat_h)) + mean(mask_g * CE(g(f(x_strong)), yhat_g)))]

with ``lamb_t = 2 / (1 + exp(-gamma min(t, T) / T)) - 1`` at the global step ``t``. ``lamb_0 = 0`` whatever
gamma, so every CMKD test fits two or three batches and replays all of them (momentum, the ``inv``
schedule and the lamb ramp all enter). ``T`` (the text embeddings) and ``s`` (the logit scale) are computed
here from the open_clip model's own text tower, so the prompts (template, renames) are pinned as well.

The tiny random-weight CLIPs (:func:`step_replay.clip.calibrated_clip`) are re-weighted so that the step is
not degenerate, and the student head's N(0, 0.001^2) weights are redrawn at N(0, 0.5^2) (else ``p_h`` is
uniform and thresholds cannot split it).
"""

import copy
import math
import os
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from conftest import make_cfg
from lightning_da.methods import CMKD
from lightning_da.optim import inv_schedule
from lightning_da.train import build, train
from step_replay import OneBatchData, assert_close_logs, assert_same_state, changed_any, mean_entropy, run_batches
from step_replay.clip import (CLASSES, FEW, SMALL, TINY_RN_OVERRIDE, calibrated_clip, image_batch,
                              text_embeddings)


PROMPTS = {"template": "a sketch of the {}", "rename": {"back_pack": "backpack"}}
PROMPT_TEXTS = ["a sketch of the backpack", "a sketch of the alarm clock", "a sketch of the bike", "a sketch of the desk lamp"]
# optimiser and schedule (all non-default): SGD nesterov, encoder at LR, head at LR * HEAD_MULT,
# lr_t = lr (1 + SCHED_GAMMA t)^-SCHED_POWER
LR, HEAD_MULT, MOMENTUM, WD = 5e-5, 300.0, 0.8, 3e-3
SCHED_GAMMA, SCHED_POWER = 0.5, 0.6
# CMKD weights: non-default and distinct
HP = {"lambda1": 0.6, "lambda2": 0.35, "lambda3": 0.15, "label_smoothing": 0.2, "lamb_gamma": 3.0, "lamb_max_iter": 4}


def make_cmkd(arch: str = "rn", **kwargs):
    """CMKD on a tiny CLIP, the replay's copy, and the zero-shot head's constants computed independently."""
    enc, clip_model, tokenizer = calibrated_clip(arch)
    text = text_embeddings(clip_model, tokenizer, [[p] for p in PROMPT_TEXTS])
    scale = clip_model.logit_scale.detach().exp()
    model = CMKD(enc, len(CLASSES), partial(torch.optim.SGD, lr=LR, momentum=MOMENTUM, weight_decay=WD, nesterov=True),
                 partial(inv_schedule, gamma=SCHED_GAMMA, power=SCHED_POWER), class_names=CLASSES, prompts=PROMPTS,
                 lr_mult={"classifier": HEAD_MULT}, **{**HP, **kwargs})
    with torch.no_grad():
        model.classifier[2].weight.normal_(0.0, 0.5)
    # building the prompt classifier leaves the shared image tower in eval mode and Lightning keeps the
    # modes it finds; put the model in training mode, where the encoder's BatchNorm must stay frozen
    model.train()
    return model, copy.deepcopy(model), text, scale


# ------------------------------------------------------------------------------------------- replay
def gini(p: torch.Tensor, w, form: str) -> torch.Tensor:
    """code: sum_i w_i (1 - sum_c p_ic^2 / N_c), N_c = sum_i p_ic detached; paper: mean_i w_i (1 - sum_c p_ic^2)."""
    if form == "code":
        return (w * (1 - (p ** 2 / p.sum(0, keepdim=True).detach()).sum(1))).sum()
    return (w * (1 - (p ** 2).sum(1))).mean()


def kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """Per-row KL(p || q) from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(1)


def cmkd_terms(ref, text, scale, batch, t: int, hp: dict) -> dict:
    """The logged terms of CMKD's training step at global step ``t``, in plain torch."""
    (xs, ys), (xt, _) = batch["source"], batch["target"]
    fixmatch = hp.get("fixmatch", {}).get("enabled", False)
    x_weak, x_strong = xt if fixmatch else (xt, None)
    enc, h = ref.backbone, ref.classifier

    def g(f):
        return scale * F.normalize(f, dim=-1) @ text.t()

    f_s, f_t = enc(xs), enc(x_weak)
    z_s = h(f_s)  # the head per domain, source first (its BatchNorm1d sees per-domain statistics)
    loss_cls = F.cross_entropy(z_s, ys, label_smoothing=hp["label_smoothing"])
    out = {"train/loss_cls": loss_cls, "train/source_acc": (z_s.argmax(1) == ys).float().mean()}
    if hp.get("baseline"):
        return {**out, "train/loss": loss_cls}
    z_t = h(f_t)
    g_s, g_t = g(f_s), g(f_t)
    p_h, p_g = z_t.softmax(1), g_t.softmax(1)
    log_h, log_g = z_t.log_softmax(1), g_t.log_softmax(1)
    alpha = torch.exp(-(kl(log_g, log_h) if hp["alpha_direction"] == "code" else kl(log_h, log_g))).detach()
    T = hp["lamb_max_iter"]
    lamb = 2 / (1 + math.exp(-hp["lamb_gamma"] * min(t, T) / T)) - 1
    form = hp["gini"]
    loss_task = hp["lambda1"] * lamb * gini(p_h, alpha, form)
    loss_distill = hp["lambda1"] * lamb * gini(0.5 * (p_h + p_g.detach()), 1 - alpha, form)
    loss_reg = hp["lambda2"] * F.cross_entropy(g_s, ys) + hp["lambda3"] * lamb * gini(p_g, 1.0, form)
    loss = loss_cls + loss_task + loss_distill + loss_reg
    out.update({"train/loss_task": loss_task, "train/loss_distill": loss_distill, "train/loss_reg": loss_reg,
                "train/alpha": alpha.mean(), "train/lamb": lamb})
    for name, w in hp.get("extra_losses", {}).items():
        if name == "entropy":
            term = mean_entropy(z_t)
        elif name == "im":
            p_mean = z_t.softmax(1).mean(0)
            term = mean_entropy(z_t) + (p_mean * torch.log(p_mean + 1e-5)).sum()
        else:
            raise NotImplementedError(name)
        loss = loss + w * term
        out[f"train/loss_{name}"] = term
    if fixmatch:
        thr, factor = hp["fixmatch"]["threshold"], hp["fixmatch"]["factor"]
        f_st = enc(x_strong)
        conf_h, yhat_h = p_h.detach().max(1)
        conf_g, yhat_g = p_g.detach().max(1)
        mask_h, mask_g = (conf_h >= thr).float(), (conf_g >= thr).float()
        fm_h = (F.cross_entropy(h(f_st), yhat_h, reduction="none") * mask_h).mean()
        fm_g = (F.cross_entropy(g(f_st), yhat_g, reduction="none") * mask_g).mean()
        loss_fm = factor * (fm_h + fm_g)
        loss = loss + loss_fm
        out.update({"train/loss_fixmatch": loss_fm, "train/mask_student": mask_h.mean(),
                    "train/mask_zero_shot": mask_g.mean()})
    out["train/loss"] = loss
    return out


def replay(ref, text, scale, batch, steps: int, hp: dict, tau: float | None = None) -> tuple[list[dict], dict]:
    """``steps`` optimiser steps of CMKD on ``ref``; returns each step's terms and, with RST, what the
    last reset did (``reset``: entries moved back to w0 at the last step, ``moved``: entries that moved)."""
    ref.train()
    for m in ref.backbone.modules():  # the CLIP encoder's BatchNorm stays frozen (fix_bn)
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    head = ref.classifier
    bn, ln, fc = head
    enc_params = list(ref.backbone.parameters())
    head_params = [bn.weight, ln.weight, ln.bias, fc.weight]  # the head's BN bias is frozen at 0
    groups = [{"params": enc_params, "lr": LR}, {"params": head_params, "lr": LR * HEAD_MULT}]
    opt = torch.optim.SGD(groups, lr=LR, momentum=MOMENTUM, weight_decay=WD, nesterov=True)
    w0 = [p.detach().clone() for p in enc_params]
    logs, rst = [], {}
    for t in range(steps):
        for group, base in zip(opt.param_groups, (LR, LR * HEAD_MULT)):
            group["lr"] = base * (1 + SCHED_GAMMA * t) ** (-SCHED_POWER)
        terms = cmkd_terms(ref, text, scale, batch, t, hp)
        opt.zero_grad()
        terms["train/loss"].backward()
        opt.step()
        if tau is not None:  # RST: w <- w0 wherever |w - w0| <= tau
            with torch.no_grad():
                reset = moved = 0
                margin = rst.get("margin", float("inf"))
                for p, w in zip(enc_params, w0):
                    small = (p - w).abs() <= tau
                    reset += int((small & (p != w)).sum())
                    moved += int((p != w).sum())
                    margin = min(margin, ((p - w).abs() - tau).abs().min().item())
                    p.copy_(torch.where(small, w, p))
                rst = {"reset": reset, "moved": moved, "margin": margin, "numel": sum(p.numel() for p in enc_params),
                       "changed": sum(int((p != w).sum()) for p, w in zip(enc_params, w0)), "w0": w0}
        logs.append({k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()})
    return logs, rst


def check_run(model, ref, logged: list[dict], expected: list[dict]) -> None:
    assert len(logged) == len(expected)
    for got, want in zip(logged, expected):
        assert {k for k in got if k.startswith("train/")} == set(want), sorted(got)
        assert_close_logs(got, want)
    assert_same_state(model, ref)
    assert torch.equal(model.classifier[0].bias, torch.zeros_like(model.classifier[0].bias))  # frozen at 0


def hparams(**over) -> dict:
    return {"gini": "code", "alpha_direction": "code", **HP, **over}


# ------------------------------------------------------------------------------------------- whole steps
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("arch,form,direction", [("rn", "code", "code"), ("rn", "paper", "paper"),
                                                 ("rn", "code", "paper"), ("rn", "paper", "code"),
                                                 ("vit", "code", "code")])
def test_cmkd_steps_match_replay(arch, form, direction):
    model, ref, text, scale = make_cmkd(arch, gini=form, alpha_direction=direction)
    before = copy.deepcopy(model)
    torch.testing.assert_close(model.zero_shot.text_features, text)  # the prompts are built as configured
    batch = image_batch(arch)
    logged, _ = run_batches(model, data=OneBatchData(batch, repeat=2))
    expected, _ = replay(ref, text, scale, batch, 2, hparams(gini=form, alpha_direction=direction))
    assert expected[0]["train/lamb"] == 0.0 and expected[1]["train/lamb"] > 0.3  # the ramped terms enter at step 1
    assert all(abs(expected[1][k]) > 1e-3 for k in ("train/loss_task", "train/loss_distill", "train/loss_reg"))
    check_run(model, ref, logged, expected)
    assert changed_any(model, before, "backbone") and changed_any(model, before, "classifier")
    bn_state = [k for k in before.state_dict() if k.startswith("backbone") and "running" in k]
    assert all(torch.equal(model.state_dict()[k], before.state_dict()[k]) for k in bn_state)  # frozen encoder BN


@pytest.mark.usefixtures("one_thread")
def test_cmkd_baseline_step_is_source_ce_only():
    model, ref, text, scale = make_cmkd(baseline=True)
    batch = image_batch()
    logged, _ = run_batches(model, data=OneBatchData(batch, repeat=2))
    expected, _ = replay(ref, text, scale, batch, 2, hparams(baseline=True))
    check_run(model, ref, logged, expected)


@pytest.mark.usefixtures("one_thread")
def test_cmkd_fixmatch_steps_match_replay():
    fixmatch = {"enabled": True, "threshold": 0.965, "factor": 1.3}
    model, ref, text, scale = make_cmkd(fixmatch=fixmatch)
    batch = image_batch(strong=True)
    logged, _ = run_batches(model, data=OneBatchData(batch, repeat=2))
    expected, _ = replay(ref, text, scale, batch, 2, hparams(fixmatch=fixmatch))
    for step in expected:  # the masks select some target rows, not all, for both heads
        assert 0 < step["train/mask_student"] < 1 and 0 < step["train/mask_zero_shot"] < 1, step
    check_run(model, ref, logged, expected)


@pytest.mark.usefixtures("one_thread")
def test_cmkd_rst_steps_match_replay(tmp_path):
    tau = 4e-4
    # three steps with T = 1: the ramp's min(t, T) clamps at t = 2
    over = {"lamb_max_iter": 1, "lamb_gamma": 1.5}
    model, ref, text, scale = make_cmkd(rst={"enabled": True, "tau": tau}, **over)
    batch = image_batch()
    logged, final = run_batches(model, data=OneBatchData(batch, repeat=3), default_root_dir=str(tmp_path))
    expected, rst = replay(ref, text, scale, batch, 3, hparams(**over), tau=tau)
    assert expected[2]["train/lamb"] == pytest.approx(2 / (1 + math.exp(-1.5)) - 1)
    # the last reset moved some, not all, of the entries that the step had changed back to w0 ...
    assert rst["reset"] > 1000 and rst["moved"] - rst["reset"] > 1000, rst
    assert 1000 < rst["changed"] < rst["numel"] - 1000
    # ... and no entry sits so close to tau that float32 rounding could decide it (a check of the test)
    assert rst["margin"] > 5e-8, rst["margin"]
    check_run(model, ref, logged, expected)
    head_numel = sum(p.numel() for p in ref.classifier.parameters())
    assert final["train/dsp_millions"] == pytest.approx((rst["changed"] + head_numel) / 1e6, rel=1e-6)
    # the sparse checkpoint holds w - w0 of the replayed encoder
    ckpt = torch.load(tmp_path / "rst_sparse.pt", weights_only=False)
    for (name, p), w in zip(ref.backbone.named_parameters(), rst["w0"]):
        torch.testing.assert_close(ckpt["encoder_residuals"][name]["residual"].to_dense(), (p - w).detach(),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.usefixtures("one_thread")
def test_cmkd_extra_losses_on_student_target_logits():
    extra = {"entropy": 0.45, "im": 0.2}
    model, ref, text, scale = make_cmkd(extra_losses=extra)
    batch = image_batch()
    logged, _ = run_batches(model, data=OneBatchData(batch, repeat=2))
    expected, _ = replay(ref, text, scale, batch, 2, hparams(extra_losses=extra))
    check_run(model, ref, logged, expected)


# ------------------------------------------------------------------------------------------- through the Hydra app
def test_cmkd_loss_matches_an_independent_computation(tmp_path, office_subset):
    cfg = make_cfg(tmp_path, ["experiment=_common/cmkd", "data=office_caltech10", f"data.root={office_subset}",
                              "method.fixmatch.enabled=true", "method.fixmatch.threshold=0.0", *SMALL, *FEW])
    dm, model, _ = build(cfg)
    assert dm.strong_target_view and model.needs.strong_view
    model.train()
    torch.manual_seed(0)
    xs, xt, xst = torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64), torch.randn(4, 3, 64, 64)
    ys = torch.tensor([0, 1, 2, 3])
    batch = {"source": (xs, ys), "target": ((xt, xst), torch.arange(4))}
    state = copy.deepcopy(model.state_dict())
    model.lamb = lambda: 0.3   # as at a later step (lamb_0 = 0 would hide the Gini terms)
    loss = model.training_step(batch, 0)
    model.load_state_dict(state)  # the head's BN running statistics moved; start again from the same state

    # independently: encoder per input, head per domain, the code's formulas written out
    f_s, f_t, f_st = model.backbone(xs), model.backbone(xt), model.backbone(xst)
    h = model.classifier
    z_s, z_t, z_st = h(f_s), h(f_t), h(f_st)
    g = lambda f: model.zero_shot.logit_scale * F.normalize(f, dim=-1) @ model.zero_shot.text_features.t()
    g_s, g_t, g_st = g(f_s), g(f_t), g(f_st)
    p_h, p_g = z_t.softmax(-1), g_t.softmax(-1)
    alpha = torch.exp(-(p_g * (p_g.log() - p_h.log())).sum(-1)).detach()
    gi = lambda p, w: (w * (1 - (p ** 2 / p.sum(0).detach()).sum(-1))).sum()
    lamb = 0.3
    expected = (F.cross_entropy(z_s, ys, label_smoothing=0.1)
                + 0.25 * lamb * (gi(p_h, alpha) + gi(0.5 * (p_h + p_g.detach()), 1 - alpha))
                + 0.1 * F.cross_entropy(g_s, ys) + 0.025 * lamb * gi(p_g, 1.0)
                + 0.5 * F.cross_entropy(z_st, p_h.argmax(1)) + 0.5 * F.cross_entropy(g_st, p_g.argmax(1)))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_cmkd_with_rst_and_fixmatch_trains_on_office_caltech(tmp_path, office_subset):
    cfg = make_cfg(tmp_path, ["experiment=_common/cmkd", "data=office_caltech10", f"data.root={office_subset}",
                              "method.rst.enabled=true", "method.rst.tau=1e-9", "method.fixmatch.enabled=true",
                              *SMALL, *FEW])
    res = train(cfg)
    assert res["method"] == "CMKD" and res["steps"] == 3 and 0 <= res["last"]["test/target_acc"] <= 1
    sparse = os.path.join(tmp_path, "checkpoints", "rst_sparse.pt")
    assert os.path.isfile(sparse)
    ckpt = torch.load(sparse, weights_only=False)
    nnz = sum(e["residual"].coalesce().values().ne(0).sum().item() for e in ckpt["encoder_residuals"].values())
    assert nnz > 0 and ckpt["meta"]["class_names"][0] == "backpack"
    state = torch.load(res["last"]["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert "zero_shot.text_features" in state and state["zero_shot.text_features"].shape == (10, 32)
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_cmkd_needs_a_clip_backbone(tmp_path):
    cfg = make_cfg(tmp_path, ["method=cmkd", "backbone=lenet"])
    with pytest.raises(Exception, match="needs a CLIP backbone"):   # Hydra wraps the TypeError
        build(cfg)


@pytest.mark.parametrize("experiment,folder,task,first_prompt", [
    ("cmkd_office_home", "office_home", ["data.source=Product", "data.target=Clipart"], "an image of a backpack"),
    ("cmkd_office31", "office31", [], "a photo of a backpack"),
    ("cmkd_visda", "visda2017", [], "a photo of a backpack"),
    ("cmkd_imageclef", "image_CLEF", ["method.prompts.class_names=[plane,bike,bird,boat,bottle,bus,car,dog,horse,monitor]"],
     "a photo of a plane"),   # the stand-in has 10 of the 12 classes
    ("cmkd_domainnet", "domainnet", ["data.source=real", "data.target=sketch"], "a photo of a backpack"),
])
def test_cmkd_experiment_configs_build(tmp_path, standins, experiment, folder, task, first_prompt):
    tiny = TINY_RN_OVERRIDE if "domainnet" not in experiment else (
        "backbone.model_cfg={embed_dim:32,vision_cfg:{image_size:32,layers:1,width:32,patch_size:16,head_width:16},"
        "text_cfg:{context_length:16,vocab_size:49408,width:32,heads:2,layers:1}}")
    cfg = make_cfg(tmp_path, [f"experiment={experiment}", f"data.root={standins / folder}", *task,
                              "backbone.pretrained=null", "trainer=cpu", tiny])
    dm, model, _ = build(cfg)
    assert model.zero_shot.prompts[0] == [first_prompt] and model.zero_shot.text_features.shape == (10, 32)
    assert model.backbone._text is None   # the text tower is gone
    groups = {g["name"]: g["lr"] for g in model.configure_optimizers()["optimizer"].param_groups}
    assert groups["classifier"] == pytest.approx(groups["backbone"] * cfg.method.lr_mult.classifier)


def test_cmkd_prompt_names_must_match_the_classes(tmp_path, standins):
    cfg = make_cfg(tmp_path, ["experiment=imageclef/cmkd", f"data.root={standins / 'image_CLEF'}", "trainer=cpu",
                              "backbone.pretrained=null", TINY_RN_OVERRIDE])
    with pytest.raises(Exception, match="prompts.class_names has 12 names but the data has 10 classes"):
        build(cfg)
