"""The TLlib digits-protocol experiments (`experiment=digits_{dann,cdan_e}_tllib`) build TLlib's
network and schedule, not digits_base's heads, and train."""

import pytest
import torch
from torch import nn

from conftest import QUICK, make_cfg
from lightning_da.models.grl import grl_coefficient
from lightning_da.train import build, train


def linears(module: nn.Module) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in module.modules() if isinstance(m, nn.Linear)]


@pytest.mark.parametrize("name,disc_in", [("digits_dann_tllib", 256), ("digits_cdan_e_tllib", 256 * 10)])
def test_tllib_experiment_builds_tllibs_network(tmp_path, name, disc_in):
    cfg = make_cfg(tmp_path, [f"experiment={name}", "data=digits_bundled"])
    assert (cfg.data.batch_size, cfg.data.iters_per_epoch, cfg.trainer.max_epochs) == (128, 2500, 20)
    assert cfg.optimizer.lr == 0.01 and cfg.optimizer.nesterov and cfg.optimizer.weight_decay == 1e-3
    _, model, _ = build(cfg)
    assert linears(model.backbone) == [(800, 500)]                      # TLlib's LeNet fc tail
    assert [type(m) for m in model.bottleneck] == [nn.Linear, nn.BatchNorm1d, nn.ReLU]
    assert linears(model.bottleneck) == [(500, 256)] and linears(model.classifier) == [(256, 10)]
    assert linears(model.discriminator) == [(disc_in, 1024), (1024, 1024), (1024, 1)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.discriminator.modules()) == 2
    # TLlib's warm-start GRL: alpha 1 over 1,000 iterations, whatever the run's length
    assert (model.grl.alpha, model.grl.max_iters) == (1.0, 1000)
    model.grl.step = 1000
    assert model.grl.coeff == pytest.approx(2 / (1 + torch.e ** -1) - 1)
    assert grl_coefficient(5000, 1000, 1.0) > 0.98


def test_tllib_experiment_trains_with_the_fixed_grl_schedule(tmp_path):
    cfg = make_cfg(tmp_path, ["experiment=digits_tllib/dann", "data=digits_bundled", *QUICK])
    res = train(cfg)
    state = torch.load(res["last"]["checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    grl_state = next(v for k, v in state.items() if k.startswith("grl") and k.endswith("_extra_state"))
    assert res["steps"] == 4 and grl_state == {"step": 3, "max_iters": 1000}   # 4th batch at step 3; not re-scaled
