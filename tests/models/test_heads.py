"""Heads (models/heads.py): the bottleneck and the domain discriminator."""

import pytest
import torch

from lightning_da.models import Bottleneck, DomainDiscriminator, MLPClassifier


def test_heads_shapes():
    assert Bottleneck(10, 0).out_features == 10
    b = Bottleneck(10, 6, batch_norm=True, dropout=0.5, init="xavier")
    assert b(torch.randn(4, 10)).shape == (4, 6) and b.out_features == 6
    assert DomainDiscriminator(6, hidden=8)(torch.randn(4, 6)).shape == (4,)


def test_mlp_classifier_xavier_init():
    """``init="xavier"`` (CGDM's digits classifier): xavier-normal Linear weights, zero biases,
    BatchNorm at PyTorch's; ``"default"`` keeps PyTorch's uniform init; an unknown name is refused."""
    torch.manual_seed(0)
    head = MLPClassifier(400, 10, hidden=[300, 300], dropout=0.5, dropout_last=True, init="xavier")
    linears = [m for m in head if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3
    for linear in linears:
        fan_out, fan_in = linear.weight.shape
        assert torch.count_nonzero(linear.bias) == 0
        assert abs(linear.weight.std().item() / (2.0 / (fan_in + fan_out)) ** 0.5 - 1) < 0.05
    bns = [m for m in head if isinstance(m, torch.nn.BatchNorm1d)]
    assert len(bns) == 2 and all(torch.equal(b.weight, torch.ones(300)) for b in bns)
    default = MLPClassifier(400, 10, hidden=[300, 300], init="default")
    assert torch.count_nonzero(default[1].bias) > 0   # PyTorch's uniform bias
    with pytest.raises(ValueError, match="unknown head init 'kaiming'"):
        MLPClassifier(400, 10, init="kaiming")
