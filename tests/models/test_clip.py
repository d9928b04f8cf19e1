"""The CLIP pieces (models/clip.py) on a small random-weight CLIP built through the same open_clip calls
(``pretrained=None`` with a small architecture config): the prompt classifier, the prompt errors, the
zero-shot head, the weights' error, and CMKD's head."""

import copy

import pytest
import torch
import torch.nn.functional as F

from lightning_da.models.clip import CLIPImageEncoder, CMKDHead, prompt_texts, zero_shot_head


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
