"""AdaBN (norm/adabn.py): the re-estimation changes the statistics only."""

import torch
from torch import nn

from lightning_da.norm import adabn_layers, adapt_batchnorm, convert_norm


def test_adabn_changes_statistics_only():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(2, 3, 8, 8))
    convert_norm(net, "adabn")
    assert adabn_layers(net) == [net[1]]
    params = {n: p.detach().clone() for n, p in net.named_parameters()}
    target = [torch.randn(10, 3, 8, 8) * 3 + 1 for _ in range(3)]
    net.eval()
    calls = []
    seen = adapt_batchnorm(net, lambda x: calls.append((net[1].training, net[3].training)) or net(x), target)
    assert seen == 30 and calls == [(True, False)] * 3                 # BN estimates, dropout stays off
    assert not net.training and not net[1].training and net[1].momentum == 0.1
    for n, p in net.named_parameters():
        assert torch.equal(p, params[n]), n
    feats = net[0](torch.cat(target)).transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(net[1].running_mean, feats.mean(1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(net[1].running_var, feats.var(1), rtol=1e-4, atol=1e-4)
