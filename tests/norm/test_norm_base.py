"""The domain-aware norm contract (norm/base.py): the domain split and its errors, the two-domain norms
on channels-last input, and the refusal of a method that cannot split its batches."""

import copy

import pytest
import torch
from torch import nn

from lightning_da.norm import (DSBN, DomainAwareNorm, DomainSplitError, ReciprocalNorm, TransNorm, convert_norm,
                               domain_split)


@pytest.mark.parametrize("kind", ["dsbn", "transnorm", "rn"])
def test_domain_aware_norm_without_split_stops(kind):
    layer = convert_norm(nn.BatchNorm2d(3), kind)
    with pytest.raises(DomainSplitError, match="without a domain split"):
        layer(torch.randn(4, 3, 2, 2))
    layer.eval()
    assert layer(torch.randn(4, 3, 2, 2)).shape == (4, 3, 2, 2)    # evaluation needs no split


class SplitRecorder(DomainAwareNorm):
    def forward(self, x):
        if self.training:
            self.seen = self.require_split(len(x))
        return x


def test_domain_split_contract():
    layer = SplitRecorder()
    net = torch.nn.Sequential(torch.nn.Identity(), layer)
    with domain_split(net, 3):
        net(torch.zeros(5, 2))
    assert layer.seen == 3 and layer.n_source is None
    with pytest.raises(DomainSplitError, match="without a domain split"):
        net(torch.zeros(5, 2))
    with pytest.raises(DomainSplitError, match="does not fit"):
        with domain_split(net, 5):
            net(torch.zeros(5, 2))


@pytest.mark.parametrize("kind", [ReciprocalNorm, DSBN, TransNorm])
def test_two_domain_norms_give_the_same_result_on_channels_last_input(kind):
    """Experiments may set method.channels_last (NHWC memory, faster convolutions and pooling on CPU)."""
    torch.manual_seed(0)
    fresh = kind(6)
    x = torch.randn(8, 6, 5, 5)
    x[4:] = x[4:] * 2 + 0.7
    outs, grads = [], []
    for inp in (x.clone(), x.contiguous(memory_format=torch.channels_last)):
        inp.requires_grad_(True)
        layer = copy.deepcopy(fresh)            # the same running statistics for both layouts
        layer.train()
        with domain_split(layer, 4):
            y = layer(inp)
        (y * torch.linspace(0, 1, y.numel()).view_as(x)).sum().backward()
        layer.eval()
        outs += [y, layer(inp)]
        grads.append(inp.grad)
    torch.testing.assert_close(outs[2], outs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[3], outs[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-5)


def test_method_that_cannot_split_refuses_domain_aware_norm():
    from functools import partial

    from lightning_da.methods import SourceOnly
    from lightning_da.models import build_backbone

    with pytest.raises(DomainSplitError, match="cannot split its batches"):
        SourceOnly(build_backbone("lenet_bn", input_size=32), 10, optimizer=partial(torch.optim.SGD, lr=0.1),
                   norm=partial(convert_norm, kind="rn"))
