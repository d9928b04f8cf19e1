"""Heads (models/heads.py): the bottleneck and the domain discriminator."""

import torch

from lightning_da.models import Bottleneck, DomainDiscriminator


def test_heads_shapes():
    assert Bottleneck(10, 0).out_features == 10
    b = Bottleneck(10, 6, batch_norm=True, dropout=0.5, init="xavier")
    assert b(torch.randn(4, 10)).shape == (4, 6) and b.out_features == 6
    assert DomainDiscriminator(6, hidden=8)(torch.randn(4, 6)).shape == (4,)
