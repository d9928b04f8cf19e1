"""Whole-step tests of the CLIP methods: CMKD (+ RST, + FixMatch) and zero-shot CLIP.

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

The tiny random-weight CLIPs are re-weighted before the method is built so that the step is not
degenerate: the ResNet's BatchNorm layers get random affine parameters and running statistics measured
on a calibration batch (random-init CLIP blocks zero their last BN, and with running stats 0/1 every
image maps to the same embedding; the ViT's pooled token is centred likewise), and the student head's
N(0, 0.001^2) weights are redrawn at N(0, 0.5^2) (else ``p_h`` is uniform and thresholds cannot split it).
"""

import copy
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from lightning_da.methods import CMKD, ZeroShotCLIP
from lightning_da.models.clip import CLIPImageEncoder
from lightning_da.optim import inv_schedule
from step_replay import OneBatchData, assert_close_logs, assert_same_state, changed_any, run_batches

TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
ARCHS = {  # (open_clip model name, architecture override, image size)
    "rn": ("RN50", {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 4, "head_width": 8},
                    "text_cfg": TEXT, "init_logit_scale": math.log(60.0)}, 32),
    "vit": ("ViT-B-16", {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                                         "head_width": 16},
                         "text_cfg": TEXT, "init_logit_scale": math.log(60.0)}, 32),
}

CLASSES = ["back_pack", "Alarm_Clock", "bike", "desk_lamp"]
PROMPTS = {"template": "a sketch of the {}", "rename": {"back_pack": "backpack"}}
PROMPT_TEXTS = ["a sketch of the backpack", "a sketch of the alarm clock", "a sketch of the bike", "a sketch of the desk lamp"]

# optimiser and schedule (all non-default): SGD nesterov, encoder at LR, head at LR * HEAD_MULT,
# lr_t = lr (1 + SCHED_GAMMA t)^-SCHED_POWER
LR, HEAD_MULT, MOMENTUM, WD = 5e-5, 300.0, 0.8, 3e-3
SCHED_GAMMA, SCHED_POWER = 0.5, 0.6
# CMKD weights: non-default and distinct
HP = {"lambda1": 0.6, "lambda2": 0.35, "lambda3": 0.15, "label_smoothing": 0.2, "lamb_gamma": 3.0, "lamb_max_iter": 4}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one intra-op thread is faster, and much faster on a busy machine (two
    threads on two cores with one taken spin-wait, 40x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_clip(arch: str = "rn", seed: int = 0):
    """A tiny random-weight CLIP image encoder and the open_clip ``(model, tokenizer)`` behind it."""
    name, cfg, _ = ARCHS[arch]
    torch.manual_seed(seed)
    enc = CLIPImageEncoder(name, pretrained=None, model_cfg=cfg)
    clip_model, tokenizer = enc._text
    bns = [m for m in enc.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:  # random affine; running stats of a calibration batch (as a pretrained net would have)
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)
            m.reset_running_stats()
            m.momentum = None
            m.train()
        calibration = torch.randn(16, 3, ARCHS[arch][2], ARCHS[arch][2])
        if bns:
            enc.visual(calibration)
        for m in bns:
            m.momentum = 0.1
            m.eval()
        if not bns:  # ViT: centre the class token after ln_post on the calibration batch
            out = {}
            hook = enc.visual.ln_post.register_forward_hook(lambda m, i, o: out.setdefault("tokens", o))
            enc.visual(calibration)
            hook.remove()
            enc.visual.ln_post.bias.sub_(out["tokens"][:, 0].mean(0))
    return enc, clip_model, tokenizer


def text_embeddings(clip_model, tokenizer, prompts: list[list[str]]) -> torch.Tensor:
    """Row c: the normalised mean of the normalised text embeddings of class c's prompts (one prompt:
    its normalised embedding)."""
    clip_model.eval()
    rows = []
    with torch.no_grad():
        for p in prompts:
            e = F.normalize(clip_model.encode_text(tokenizer(p)).float(), dim=-1)
            rows.append(F.normalize(e.mean(0), dim=-1) if len(e) > 1 else e[0])
    return torch.stack(rows)


def images(n: int, size: int, gen: torch.Generator, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=gen) * scale + shift


def make_batch(arch: str = "rn", strong: bool = False, seed: int = 1) -> dict:
    """5 source images, 7 target images (shifted and scaled); a strong view of the target, if asked."""
    size = ARCHS[arch][2]
    g = torch.Generator().manual_seed(seed)
    xs, xt = images(5, size, g), images(7, size, g, shift=0.4, scale=1.5)
    if strong:  # another view of the same target images
        xt = (xt, 0.7 * xt.flip(-1) + 0.3 * images(7, size, g))
    return {"source": (xs, torch.tensor([0, 3, 1, 2, 3])), "target": (xt, torch.arange(7))}


def make_cmkd(arch: str = "rn", **kwargs):
    """CMKD on a tiny CLIP, the replay's copy, and the zero-shot head's constants computed independently."""
    enc, clip_model, tokenizer = tiny_clip(arch)
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


def entropy(z: torch.Tensor) -> torch.Tensor:
    p = z.softmax(1)
    return -(p * torch.log(p + 1e-5)).sum(1).mean()


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
            term = entropy(z_t)
        elif name == "im":
            p_mean = z_t.softmax(1).mean(0)
            term = entropy(z_t) + (p_mean * torch.log(p_mean + 1e-5)).sum()
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


# ------------------------------------------------------------------------------------------- CMKD
@pytest.mark.parametrize("arch,form,direction", [("rn", "code", "code"), ("rn", "paper", "paper"),
                                                 ("rn", "code", "paper"), ("rn", "paper", "code"),
                                                 ("vit", "code", "code")])
def test_cmkd_steps_match_replay(arch, form, direction):
    model, ref, text, scale = make_cmkd(arch, gini=form, alpha_direction=direction)
    before = copy.deepcopy(model)
    torch.testing.assert_close(model.zero_shot.text_features, text)  # the prompts are built as configured
    batch = make_batch(arch)
    logged, _ = run_batches(model, data=OneBatchData(batch, repeat=2))
    expected, _ = replay(ref, text, scale, batch, 2, hparams(gini=form, alpha_direction=direction))
    assert expected[0]["train/lamb"] == 0.0 and expected[1]["train/lamb"] > 0.3  # the ramped terms enter at step 1
    assert all(abs(expected[1][k]) > 1e-3 for k in ("train/loss_task", "train/loss_distill", "train/loss_reg"))
    check_run(model, ref, logged, expected)
    assert changed_any(model, before, "backbone") and changed_any(model, before, "classifier")
    bn_state = [k for k in before.state_dict() if k.startswith("backbone") and "running" in k]
    assert all(torch.equal(model.state_dict()[k], before.state_dict()[k]) for k in bn_state)  # frozen encoder BN


def test_cmkd_baseline_step_is_source_ce_only():
    model, ref, text, scale = make_cmkd(baseline=True)
    batch = make_batch()
    logged, _ = run_batches(model, data=OneBatchData(batch, repeat=2))
    expected, _ = replay(ref, text, scale, batch, 2, hparams(baseline=True))
    check_run(model, ref, logged, expected)


def test_cmkd_fixmatch_steps_match_replay():
    fixmatch = {"enabled": True, "threshold": 0.965, "factor": 1.3}
    model, ref, text, scale = make_cmkd(fixmatch=fixmatch)
    batch = make_batch(strong=True)
    logged, _ = run_batches(model, data=OneBatchData(batch, repeat=2))
    expected, _ = replay(ref, text, scale, batch, 2, hparams(fixmatch=fixmatch))
    for step in expected:  # the masks select some target rows, not all, for both heads
        assert 0 < step["train/mask_student"] < 1 and 0 < step["train/mask_zero_shot"] < 1, step
    check_run(model, ref, logged, expected)


def test_cmkd_rst_steps_match_replay(tmp_path):
    tau = 4e-4
    # three steps with T = 1: the ramp's min(t, T) clamps at t = 2
    over = {"lamb_max_iter": 1, "lamb_gamma": 1.5}
    model, ref, text, scale = make_cmkd(rst={"enabled": True, "tau": tau}, **over)
    batch = make_batch()
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


def test_cmkd_extra_losses_on_student_target_logits():
    extra = {"entropy": 0.45, "im": 0.2}
    model, ref, text, scale = make_cmkd(extra_losses=extra)
    batch = make_batch()
    logged, _ = run_batches(model, data=OneBatchData(batch, repeat=2))
    expected, _ = replay(ref, text, scale, batch, 2, hparams(extra_losses=extra))
    check_run(model, ref, logged, expected)


# ------------------------------------------------------------------------------------------- zero-shot
@pytest.mark.parametrize("arch,templates", [("rn", ["a sketch of the {}", "a photo of my {}"]),
                                            ("vit", "a painting of a {}")])
def test_zeroshot_logits_match_plain_clip(arch, templates):
    enc, clip_model, tokenizer = tiny_clip(arch)
    model = ZeroShotCLIP(enc, len(CLASSES), partial(torch.optim.SGD, lr=0.1), class_names=CLASSES,
                         prompts={"template": templates, "rename": {"back_pack": "backpack"}})
    assert model.needs.trains is False
    names = ["backpack", "alarm clock", "bike", "desk lamp"]
    tpls = [templates] if isinstance(templates, str) else templates
    text = text_embeddings(clip_model, tokenizer, [[t.format(n) for t in tpls] for n in names])
    x = make_batch(arch)["target"][0]
    model.eval()
    with torch.no_grad():
        f = clip_model.encode_image(x)  # the open_clip model's own image tower
        expected = clip_model.logit_scale.exp() * F.normalize(f, dim=-1) @ text.t()
        logits = model(x)
    assert expected.argmax(1).unique().numel() > 1  # not a degenerate prediction
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_zeroshot_training_step_raises():
    enc, _, _ = tiny_clip("rn")
    model = ZeroShotCLIP(enc, len(CLASSES), partial(torch.optim.SGD, lr=0.1), class_names=CLASSES)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match="nothing to train"):
        model.training_step(make_batch(), 0)
    with pytest.raises(RuntimeError, match="nothing to train"):
        run_batches(model, data=OneBatchData(make_batch()))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
