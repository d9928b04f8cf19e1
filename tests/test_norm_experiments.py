"""A few steps of every normalization experiment config: RN + CDAN+E on stand-ins in the Office-Home,
Office-31 and VisDA layouts (ResNet-50 without ImageNet weights at 64 px), the digits comparison on
real digits, and the Office-Caltech10 comparison on real images with EfficientNet-Lite0's weights."""

import pytest
import torch

from conftest import FEW, SHARED_DATA, SMALL_IMAGES, make_cfg, needs_shared
from lightning_da.train import train

pytestmark = pytest.mark.slow


def rn_layers(results) -> int:
    state = torch.load(results["last"]["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    return sum(k.endswith("gate_mean_target") for k in state)


@pytest.mark.parametrize("name,folder,task,seed", [
    ("rn_office_home", "office_home", ["data.source=Product", "data.target=Clipart"], 1380),
    ("rn_office31", "office31", [], 0),
    ("rn_visda", "visda2017", [], 2021),
])
def test_rn_experiments_on_standins(tmp_path, standins, name, folder, task, seed):
    cfg = make_cfg(tmp_path, [f"experiment={name}", f"data.root={standins / folder}", "backbone.pretrained=false",
                              *task, *SMALL_IMAGES, *FEW])
    assert cfg.seed == seed and cfg.trainer.max_steps == 20004 and cfg.method.lr_mult.bottleneck == 10
    res = train(cfg)
    assert res["steps"] == 2 and "best" not in res and 0 <= res["last"]["test/target_acc"] <= 1
    n_bn_resnet50 = 53
    assert rn_layers(res) == n_bn_resnet50 + (0 if name == "rn_visda" else 1)   # + the bottleneck's RN1d


@needs_shared(SHARED_DATA / "MNIST")
@pytest.mark.parametrize("norm", ["rn", "dsbn"])
def test_norm_digits_experiment(tmp_path, norm):
    res = train(make_cfg(tmp_path, ["experiment=digits/norm_cdan_e", f"norm={norm}", f"paths.data_dir={SHARED_DATA}", *FEW]))
    assert res["steps"] == 2 and 0 <= res["last"]["test/target_acc"] <= 1


def test_norm_office_caltech_experiment(tmp_path, office_subset):
    cfg = make_cfg(tmp_path, ["experiment=office_caltech/norm_cdan_e", "norm=rn", f"data.root={office_subset}",
                              *SMALL_IMAGES, *FEW])
    res = train(cfg)
    assert res["steps"] == 2 and rn_layers(res) == 49 + 1      # every BN of EfficientNet-Lite0 + the bottleneck
