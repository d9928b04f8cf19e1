"""norm=none (lightning_da.norm.convert_norm): every BatchNorm layer removed; data=features picks it
and backbone=mlp (conf/data/features.yaml), while an explicit choice on the command line wins."""

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from conftest import make_cfg, save_features
from lightning_da.models import build_backbone
from lightning_da.models.heads import Bottleneck
from lightning_da.norm import convert_norm
from lightning_da.train import build


def test_none_removes_every_batchnorm_and_keeps_the_rest():
    net = nn.Sequential(build_backbone("mlp", in_features=6, hidden=[5]), Bottleneck(5, 4, batch_norm=True))
    x = torch.randn(3, 6)
    convert_norm(net, "none")
    assert not any(isinstance(m, _BatchNorm) for m in net.modules())
    linear1, linear2 = net[0][0], net[1][0]
    torch.testing.assert_close(net(x), torch.relu(linear2(torch.relu(linear1(x)))))
    with pytest.raises(ValueError, match="norm=none takes no options"):
        convert_norm(net, "none", shared_affine=True)


def test_feature_uda_defaults_to_a_batchnorm_free_one_hidden_layer_net(tmp_path):
    save_features(tmp_path / "a.npz", 10, 12)
    save_features(tmp_path / "b.npz", 8, 12, seed=1)
    base = ["data=features", f"data.source={tmp_path / 'a.npz'}", f"data.target={tmp_path / 'b.npz'}",
            "data.labeled_per_class=null", "method=source_only", "logger=none"]
    cfg = make_cfg(tmp_path, base)
    assert (cfg.backbone.name, cfg.norm.kind, list(cfg.backbone.hidden)) == ("mlp", "none", [])
    _, model, _ = build(cfg)
    assert not any(isinstance(m, _BatchNorm) for m in model.modules())
    assert [type(m) for m in model.bottleneck] == [nn.Linear, nn.Identity, nn.ReLU] and len(model.backbone) == 0
    chosen = make_cfg(tmp_path, [*base, "norm=bn", "backbone.hidden=[32]"])
    assert chosen.norm.kind == "bn" and list(chosen.backbone.hidden) == [32]
