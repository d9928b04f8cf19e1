"""What the norm group does around training (norm/hooks.py), in real runs: RN's gates clamped after
every step, and every norm training under CDAN."""

import math

import pytest
import torch


@pytest.mark.parametrize("method", ["cdan", "mcd"])
def test_rn_gates_are_clamped_after_every_step_in_training(tmp_path, method):
    from conftest import QUICK, make_cfg
    from lightning_da.train import train

    # a huge gate learning rate pushes the gates far out of range; the post-step clamp brings them back
    cfg = make_cfg(tmp_path, QUICK + [f"method={method}", "norm=rn", "backbone=lenet_bn", "data.domain_args.image_size=32",
                                      "+method.lr_mult.norm_gates=1.0e5", "logger=csv"])
    results = train(cfg)
    state = torch.load(results["last"]["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    gates = torch.cat([v for k, v in state.items() if ".gate_" in k])
    assert len(gates) > 0 and gates.min() >= 0.5 and gates.max() <= 1.0
    assert (gates == 0.5).any(), "the gates never moved: the lr group or the step did not reach them"
    assert math.isfinite(results["last"]["test/target_acc"])


@pytest.mark.parametrize("norm", ["dsbn", "transnorm", "adabn"])
def test_every_norm_trains_under_cdan(tmp_path, norm):
    from conftest import QUICK, make_cfg
    from lightning_da.train import train

    cfg = make_cfg(tmp_path, QUICK + ["method=cdan", f"norm={norm}", "backbone=lenet_bn", "data.domain_args.image_size=32",
                                      "logger=csv"])
    results = train(cfg)
    assert 0.0 <= results["last"]["test/target_acc"] <= 1.0
