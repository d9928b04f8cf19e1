"""The conversion of a built network (``convert_norm``, norm/__init__.py): pretrained BN carried over,
timm's activations kept, the library's backbones, and RN1d's gamma quirk."""

import pytest
import torch
from torch import nn

from lightning_da.norm import DSBN, ReciprocalNorm, convert_norm


def test_convert_norm_carries_pretrained_bn_and_keeps_timm_activations():
    import timm

    net = timm.create_model("efficientnet_b0", pretrained=False, num_classes=0)
    x = torch.randn(2, 3, 64, 64)
    ref = net.eval()(x)
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    convert_norm(net, "dsbn")
    assert sum(isinstance(m, DSBN) for m in net.modules()) == n_bn
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    torch.testing.assert_close(net.eval()(x), ref, rtol=1e-4, atol=1e-4)   # BatchNormAct's SiLU kept


def test_convert_norm_on_library_backbones_and_rn1d_gamma_quirk():
    from lightning_da.models import build_backbone
    from lightning_da.models.heads import Bottleneck

    for name, kw in [("lenet_bn", {"input_size": 32}), ("resnet18", {}), ("efficientnet_lite0", {})]:
        net = convert_norm(build_backbone(name, pretrained=False, **kw), "rn")
        assert any(isinstance(m, ReciprocalNorm) for m in net.modules()), name
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules()), name
    torch.manual_seed(0)
    head = convert_norm(Bottleneck(16, 8, batch_norm=True), "rn")
    gamma = head[1].weight
    assert not torch.all(gamma == 1) and gamma.min() >= 0 and gamma.max() <= 1     # U(0, 1), the RN1d quirk
    head = convert_norm(Bottleneck(16, 8, batch_norm=True), "rn", rn1d_uniform_gamma=False)
    assert torch.all(head[1].weight == 1)
    with pytest.raises(ValueError, match="unknown norm"):
        convert_norm(nn.BatchNorm1d(3), "groupnorm")
