"""The optimisation pieces (optim.py): parameter groups (learning-rate multipliers and per-group
optimiser settings by module name), SAM against a hand computation, and the poly schedule's floor."""

import math
from functools import partial

import pytest
import torch
from torch import nn

from lightning_da.methods import DANN
from lightning_da.models import build_backbone
from lightning_da.optim import SAMPerturbation, param_groups, poly_schedule


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
