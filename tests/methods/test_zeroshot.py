"""Zero-shot CLIP: its logits against the open_clip model's own towers (tiny random-weight CLIPs, see
:mod:`step_replay.clip`), it has nothing to train, and it evaluates through the Hydra app."""

import copy
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from conftest import make_cfg
from lightning_da.methods import ZeroShotCLIP
from lightning_da.train import train
from step_replay import OneBatchData, run_batches
from step_replay.clip import CLASSES, FEW, SMALL, calibrated_clip, image_batch, text_embeddings


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("arch,templates", [("rn", ["a sketch of the {}", "a photo of my {}"]),
                                            ("vit", "a painting of a {}")])
def test_zeroshot_logits_match_plain_clip(arch, templates):
    enc, clip_model, tokenizer = calibrated_clip(arch)
    model = ZeroShotCLIP(enc, len(CLASSES), partial(torch.optim.SGD, lr=0.1), class_names=CLASSES,
                         prompts={"template": templates, "rename": {"back_pack": "backpack"}})
    assert model.needs.trains is False
    names = ["backpack", "alarm clock", "bike", "desk lamp"]
    tpls = [templates] if isinstance(templates, str) else templates
    text = text_embeddings(clip_model, tokenizer, [[t.format(n) for t in tpls] for n in names])
    x = image_batch(arch)["target"][0]
    model.eval()
    with torch.no_grad():
        f = clip_model.encode_image(x)  # the open_clip model's own image tower
        expected = clip_model.logit_scale.exp() * F.normalize(f, dim=-1) @ text.t()
        logits = model(x)
    assert expected.argmax(1).unique().numel() > 1  # not a degenerate prediction
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_zeroshot_training_step_raises():
    enc, _, _ = calibrated_clip("rn")
    model = ZeroShotCLIP(enc, len(CLASSES), partial(torch.optim.SGD, lr=0.1), class_names=CLASSES)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(RuntimeError, match="nothing to train"):
        model.training_step(image_batch(), 0)
    with pytest.raises(RuntimeError, match="nothing to train"):
        run_batches(model, data=OneBatchData(image_batch()))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_zeroshot_method_evaluates_without_training(tmp_path, office_subset):
    cfg = make_cfg(tmp_path, ["experiment=_common/cmkd", "method=zeroshot", "data=office_caltech10",
                              f"data.root={office_subset}", *SMALL, *FEW])
    res = train(cfg)
    assert res["method"] == "ZeroShotCLIP" and res["steps"] == 0 and 0 <= res["last"]["test/target_acc"] <= 1
