"""CMKD, RST and zero-shot CLIP on small random-weight CLIP models built through the same open_clip calls
(``pretrained=None`` with a small architecture config): the prompt classifier, each loss against an
independent computation, RST's mask and the exact sparse checkpoint, and a few steps on Office-Caltech10."""

import copy
import math
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import QUICK, make_cfg
from lightning_da.losses import agreement_weight, gini_impurity, sigmoid_ramp
from lightning_da.models.clip import CLIPImageEncoder, CMKDHead, prompt_texts, zero_shot_head
from lightning_da.models.rst import ResidualSparseTraining, load_sparse_checkpoint, save_sparse_checkpoint
from lightning_da.train import build, train

TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
TINY_RN = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
           "text_cfg": TEXT}
TINY_RN_OVERRIDE = ("backbone.model_cfg={embed_dim:32,vision_cfg:{image_size:64,layers:[1,1,1,1],width:8,head_width:8},"
                    "text_cfg:{context_length:16,vocab_size:49408,width:32,heads:2,layers:1}}")


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    return CLIPImageEncoder("RN50", pretrained=None, model_cfg=TINY_RN)


def test_prompt_classifier_shape_and_class_order(tiny_clip):
    names = ["back_pack", "bike", "Alarm_Clock"]
    texts = prompt_texts(names, "a photo of a {}", rename={"back_pack": "backpack"})
    assert texts == [["a photo of a backpack"], ["a photo of a bike"], ["a photo of a alarm clock"]]
    t = tiny_clip.prompt_classifier(texts)
    assert t.shape == (3, tiny_clip.out_features)
    assert torch.allclose(t.norm(dim=1), torch.ones(3))
    # row c is the class-c prompt's own embedding, whatever the order of the others
    model, tokenizer = tiny_clip._text
    with torch.no_grad():
        single = F.normalize(model.encode_text(tokenizer(["a photo of a bike"])), dim=-1)[0]
        reordered = tiny_clip.prompt_classifier(prompt_texts(names[::-1], rename={"back_pack": "backpack"}))
    torch.testing.assert_close(t[1], single)
    torch.testing.assert_close(reordered, t.flip(0))
    # several templates: the normalised mean of normalised embeddings
    two = tiny_clip.prompt_classifier(prompt_texts(["bike"], ["a photo of a {}", "a drawing of a {}"]))[0]
    with torch.no_grad():
        e = F.normalize(model.encode_text(tokenizer(["a photo of a bike", "a drawing of a bike"])), dim=-1)
    torch.testing.assert_close(two, F.normalize(e.mean(0), dim=0))


def test_prompt_errors(caplog):
    assert prompt_texts(["a", "b"], rename={"c": "x"}) == [["a photo of a a"], ["a photo of a b"]]
    assert "rename names classes the data does not have" in caplog.text
    with pytest.raises(ValueError, match="2 names but the data has 3 classes"):
        prompt_texts(["0", "1", "2"], names=["plane", "bike"])
    with pytest.raises(ValueError, match="has no"):
        prompt_texts(["a"], "a photo")
    assert prompt_texts(["0", "1"], names=["plane", "bike"]) == [["a photo of a plane"], ["a photo of a bike"]]


def test_zero_shot_head_and_frozen_bn(tiny_clip):
    enc = copy.deepcopy(tiny_clip)
    head = zero_shot_head(enc, ["cat", "dog"], {"template": "a photo of a {}"})
    assert enc._text is None and head.text_features.shape == (2, 32)
    x = torch.randn(3, 3, 64, 64)
    f = enc(x)
    expected = enc.logit_scale * (f / f.norm(dim=1, keepdim=True)) @ head.text_features.t()
    torch.testing.assert_close(head(f), expected)
    enc.train()
    bns = [m for m in enc.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns) and all(m.weight.requires_grad for m in bns)
    with pytest.raises(TypeError, match="needs a CLIP backbone"):
        zero_shot_head(torch.nn.Linear(2, 2), ["a"])


def test_clip_weights_error_names_the_weights(monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(RuntimeError) as err:
        CLIPImageEncoder("RN50", pretrained="openai", cache_dir="/nonexistent/clip-cache")
    msg = str(err.value)
    assert "RN50" in msg and "openai" in msg and "timm/resnet50_clip.openai" in msg and "/nonexistent/clip-cache" in msg
    assert "backbone.pretrained=/path/to/checkpoint" in msg
    with pytest.raises(FileNotFoundError, match="not a file"):
        CLIPImageEncoder("RN50", pretrained="/nonexistent/RN50.pt")


def test_cmkd_head():
    head = CMKDHead(16, 5)
    bn, ln, fc = head
    assert fc.bias is None and ln.eps == 1e-6 and not bn.bias.requires_grad and torch.all(bn.weight == 1)
    assert 0.0005 < fc.weight.std().item() < 0.002


def gini_reference(p, w, form):
    """Sample by sample: code = sum_i w_i (1 - sum_c p_ic^2 / sum_j p_jc); paper = mean_i w_i (1 - sum_c p_ic^2)."""
    b, c = p.shape
    mass = [sum(p[j, k].item() for j in range(b)) for k in range(c)]
    terms = []
    for i in range(b):
        wi = w if isinstance(w, float) else w[i].item()
        s = sum(p[i, k].item() ** 2 / (mass[k] if form == "code" else 1.0) for k in range(c))
        terms.append(wi * (1 - s))
    return sum(terms) if form == "code" else sum(terms) / b


def test_gini_impurity_and_alpha_against_reference():
    torch.manual_seed(1)
    z_h, z_g = torch.randn(6, 4), torch.randn(6, 4) * 3
    p_h, p_g = z_h.softmax(-1), z_g.softmax(-1)
    w = torch.rand(6)
    for form in ("code", "paper"):
        assert gini_impurity(p_h, w, form).item() == pytest.approx(gini_reference(p_h, w, form), rel=1e-5)
        assert gini_impurity(p_h, 1.0, form).item() == pytest.approx(gini_reference(p_h, 1.0, form), rel=1e-5)
    # the class mass is a constant: the gradient is -2 w_i p_ic / N_c
    p = p_h.clone().requires_grad_(True)
    gini_impurity(p, w, "code").backward()
    torch.testing.assert_close(p.grad, -2 * w[:, None] * p_h / p_h.sum(0, keepdim=True))
    for direction, (a, b) in (("code", (p_g, p_h)), ("paper", (p_h, p_g))):
        kl = [sum(a[i, k].item() * math.log(a[i, k].item() / b[i, k].item()) for k in range(4)) for i in range(6)]
        torch.testing.assert_close(agreement_weight(z_h, z_g, direction), torch.tensor([math.exp(-v) for v in kl]))
    assert sigmoid_ramp(0) == 0.0 and sigmoid_ramp(10000) == pytest.approx(2 / (1 + math.exp(-1)) - 1)
    assert sigmoid_ramp(50000) == sigmoid_ramp(10000) and sigmoid_ramp(5000, 1.0, 10000) == pytest.approx(2 / (1 + math.exp(-0.5)) - 1)


# ---------------------------------------------------------------------------------------------- RST
def test_rst_resets_small_changes_and_counts_dsp(tiny_clip):
    enc = copy.deepcopy(tiny_clip)
    rst = ResidualSparseTraining(enc, tau=1e-3)
    p = next(enc.parameters())
    w0 = p.detach().clone()
    delta = torch.zeros_like(p).flatten()
    delta[:4] = torch.tensor([5e-4, -9e-4, 2e-3, -0.5])   # two within tau (reset), two beyond (kept)
    with torch.no_grad():
        p.add_(delta.view_as(p))
    rst.reset_small_changes(enc)
    kept = (p.detach() != w0).flatten()
    assert kept.sum() == 2 and kept[2] and kept[3] and torch.equal(p.detach().flatten()[:2], w0.flatten()[:2])
    head = CMKDHead(32, 3)
    assert rst.changed(enc) == 2
    assert rst.dsp(enc, head) == pytest.approx((2 + sum(q.numel() for q in head.parameters())) / 1e6)


def test_rst_sparse_checkpoint_round_trips_exactly(tmp_path, tiny_clip):
    pretrained = copy.deepcopy(tiny_clip)
    enc = copy.deepcopy(tiny_clip)
    rst = ResidualSparseTraining(enc, tau=1e-6)
    torch.manual_seed(3)
    with torch.no_grad():
        for q in enc.parameters():
            q.add_(torch.randn_like(q) * 1e-3 * (torch.rand_like(q) < 0.05))
        # a change where w0 + (w - w0) != w in float32: the exact value must still come back
        name = next(iter(rst.reference))
        for w0_holder in (rst.reference[name], next(pretrained.parameters())):
            w0_holder.view(-1)[0] = 1.0
        next(enc.parameters()).view(-1)[0] = 3e-8
    rst.reset_small_changes(enc)
    head = CMKDHead(32, 3)
    path = tmp_path / "rst.pt"
    save_sparse_checkpoint(str(path), rst, enc, head, note="test")
    w, w0 = torch.tensor(3e-8), torch.tensor(1.0)
    assert (w0 + (w - w0)) != w   # the float32 case the exact entries are for
    rebuilt, rebuilt_head = copy.deepcopy(pretrained), CMKDHead(32, 3)
    assert load_sparse_checkpoint(str(path), rebuilt, rebuilt_head) == {"note": "test"}
    for (n, a), b in zip(enc.named_parameters(), rebuilt.parameters()):
        assert torch.equal(a, b), n
    for k, v in head.state_dict().items():
        assert torch.equal(v, rebuilt_head.state_dict()[k])
    assert torch.load(path, weights_only=False)["encoder_residuals"]["visual.conv1.weight"]["residual"].is_sparse
    with pytest.raises(ValueError, match="not an RST sparse checkpoint"):
        torch.save({"x": 1}, tmp_path / "other.pt")
        load_sparse_checkpoint(str(tmp_path / "other.pt"), rebuilt, rebuilt_head)


# ---------------------------------------------------------------------------------------------- runs
SMALL = ["trainer=cpu", "data.num_workers=0", "data.pin_memory=false", "data.persistent_workers=false",
         "data.domain_args.transform.resize=72", "data.domain_args.transform.crop=64",
         "data.domain_args.transform.test_resize=64", "backbone.pretrained=null", TINY_RN_OVERRIDE]
FEW = [*QUICK, "data.iters_per_epoch=3", "data.batch_size=4", "trainer.max_epochs=1", "trainer.precision=32"]


def test_cmkd_loss_matches_an_independent_computation(tmp_path, office_subset):
    cfg = make_cfg(tmp_path, ["experiment=cmkd_base", "data=office_caltech10", f"data.root={office_subset}",
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
    cfg = make_cfg(tmp_path, ["experiment=cmkd_base", "data=office_caltech10", f"data.root={office_subset}",
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


def test_zeroshot_method_evaluates_without_training(tmp_path, office_subset):
    cfg = make_cfg(tmp_path, ["experiment=cmkd_base", "method=zeroshot", "data=office_caltech10",
                              f"data.root={office_subset}", *SMALL, *FEW])
    res = train(cfg)
    assert res["method"] == "ZeroShotCLIP" and res["steps"] == 0 and 0 <= res["last"]["test/target_acc"] <= 1


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
    cfg = make_cfg(tmp_path, ["experiment=cmkd_imageclef", f"data.root={standins / 'image_CLEF'}", "trainer=cpu",
                              "backbone.pretrained=null", TINY_RN_OVERRIDE])
    with pytest.raises(Exception, match="prompts.class_names has 12 names but the data has 10 classes"):
        build(cfg)
