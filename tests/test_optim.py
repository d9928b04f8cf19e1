"""Parameter groups: learning-rate multipliers and per-group optimiser settings by module name."""

from functools import partial

import pytest
import torch
from torch import nn

from lightning_da.methods import DANN
from lightning_da.models import build_backbone
from lightning_da.optim import param_groups


def test_group_options_override_the_optimizers_settings_per_module():
    modules = [("backbone", nn.Linear(3, 4)), ("head", nn.Linear(4, 2))]
    groups = param_groups(modules, 0.1, {"head": 10.0}, {"backbone": {"momentum": 0.0}})
    opt = torch.optim.SGD(groups, lr=0.1, momentum=0.9)
    assert [(g["name"], g["lr"], g["momentum"]) for g in opt.param_groups] == [("backbone", 0.1, 0.0), ("head", 1.0, 0.9)]
    with pytest.raises(ValueError, match=r"group_options names unknown modules \['neck'\]"):
        param_groups(modules, 0.1, None, {"neck": {"momentum": 0.0}})


def test_a_method_passes_group_options_to_its_optimizer():
    model = DANN(build_backbone("lenet"), 10, partial(torch.optim.SGD, lr=0.01, momentum=0.9),
                 group_options={"backbone": {"momentum": 0.0}})
    opt = model.configure_optimizers()
    assert {g["name"]: g["momentum"] for g in opt.param_groups} == {
        "backbone": 0.0, "bottleneck": 0.9, "classifier": 0.9, "discriminator": 0.9}
