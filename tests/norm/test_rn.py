"""Reciprocal normalization (norm/rn.py): RN against a slow reference in training and evaluation, its
gradients and running statistics, its refusals, a BN checkpoint loaded into an RN network, and the
gates' own learning-rate group."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from lightning_da.norm import DomainSplitError, ReciprocalNorm, convert_norm, domain_split
from lightning_da.optim import param_groups


def reference_rn(x, n, layer: ReciprocalNorm, training: bool):
    """RN written out channel by channel in float64 (the RN code, as docs/methods/normalization.md describes it)."""
    x = x.double()
    C = x.shape[1]
    w, b = layer.weight.double(), layer.bias.double()
    shape = (1, C) + (1,) * (x.ndim - 2)
    if not training:
        mean, var = layer.running_mean_target.double(), layer.running_var_target.double()
        return (x - mean.view(shape)) / torch.sqrt(var.view(shape) + layer.eps) * w.view(shape) + b.view(shape)
    G = 1 if C < 512 else C // 512
    R = C // G
    halves = [x[:n], x[n:]]
    flat = [h.transpose(0, 1).reshape(C, -1) for h in halves]           # (C, samples)
    mu = [f.mean(1) for f in flat]
    var = [f.var(1, unbiased=True) for f in flat]

    def row_means(v):
        return torch.stack([v[r * G:(r + 1) * G].mean() for r in range(R)])

    def compensate(own, other):                       # A_{own<-other} other
        m_own, m_other = row_means(own), row_means(other)
        out = torch.empty(C, dtype=torch.float64)
        for i in range(R):
            weights = torch.exp(-(m_own[i] - m_other) ** 2)
            weights = weights / weights.sum()
            for k in range(G):
                out[i * G + k] = sum(weights[j] * other[j * G + k] for j in range(R))
        return out

    gates = {name: getattr(layer, name).double() for name in layer.GATES}
    outs = []
    for d, (dom, other) in enumerate([(0, 1), (1, 0)]):
        side = "source" if d == 0 else "target"
        gm, gv = gates[f"gate_mean_{side}"], gates[f"gate_var_{side}"]
        mu_hat = gm * mu[dom] + (1 - gm) * compensate(mu[dom], mu[other])
        var_hat = gv * var[dom] + (1 - gv) * compensate(var[dom], var[other])
        outs.append((halves[d] - mu_hat.view(shape)) / torch.sqrt(var_hat.view(shape) + layer.eps) * w.view(shape)
                    + b.view(shape))
    return torch.cat(outs)


def random_rn(C: int) -> ReciprocalNorm:
    torch.manual_seed(C)
    layer = ReciprocalNorm(C)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
        for name in layer.GATES:
            getattr(layer, name).uniform_(0.5, 1.0)
        layer.running_mean_target.normal_()
        layer.running_var_target.uniform_(0.5, 2.0)
        layer.running_mean_source.normal_()
    return layer


@pytest.mark.parametrize("shape", [(8, 6), (8, 6, 5, 5), (4, 1024), (4, 1024, 2, 3), (4, 1536, 2, 2)],
                         ids=["1d", "2d", "1d-grouped", "2d-grouped", "2d-grouped3"])
def test_rn_matches_reference_in_training_and_eval(shape):
    layer = random_rn(shape[1])
    x = torch.randn(shape) * 2 + torch.linspace(-1, 1, shape[1]).view(1, -1, *(1,) * (len(shape) - 2))
    x[len(x) // 2:] += 0.7                                             # a domain shift
    n = len(x) // 2
    layer.train()
    with domain_split(layer, n):
        y = layer(x)
    assert layer.groups == (1 if shape[1] < 512 else shape[1] // 512)
    torch.testing.assert_close(y.double(), reference_rn(x, n, layer, True), rtol=1e-4, atol=1e-4)
    layer.eval()
    torch.testing.assert_close(layer(x).double(), reference_rn(x, n, layer, False), rtol=1e-5, atol=1e-5)


def test_rn_gradients_reach_the_gates_and_running_stats_track_the_aggregated_statistics():
    layer = random_rn(6)
    x = torch.randn(8, 6, 4, 4)
    x[4:] = x[4:] * 3 + 1
    with domain_split(layer, 4):
        out = layer(x)
    (out * torch.randn_like(out)).sum().backward()
    for name in layer.GATES:
        g = getattr(layer, name).grad
        assert g is not None and g.abs().sum() > 0, name
    # with every gate at 1 RN is domain-specific BN with the unbiased variance, and so are its running stats
    plain = ReciprocalNorm(6, momentum=1.0)
    with domain_split(plain, 4):
        y = plain(x)
    xs, xt = x[:4].transpose(0, 1).reshape(6, -1), x[4:].transpose(0, 1).reshape(6, -1)
    torch.testing.assert_close(plain.running_mean_target, xt.mean(1))
    torch.testing.assert_close(plain.running_var_source, xs.var(1, unbiased=True))
    expected_t = (x[4:] - xt.mean(1).view(1, 6, 1, 1)) / torch.sqrt(xt.var(1).view(1, 6, 1, 1) + 1e-5)
    torch.testing.assert_close(y[4:], expected_t, rtol=1e-4, atol=1e-5)


def test_rn_eval_uses_target_statistics_only():
    layer = random_rn(5).eval()
    x = torch.randn(3, 5)
    before = layer(x)
    layer.running_mean_source.add_(100.0)
    layer.running_var_source.mul_(50.0)
    torch.testing.assert_close(layer(x), before)
    layer.running_mean_target.add_(1.0)
    assert not torch.allclose(layer(x), before)


def test_rn_refuses_unequal_halves_and_l1_on_grouped_layers():
    layer = ReciprocalNorm(4)
    with pytest.raises(DomainSplitError, match="equal source and target halves"):
        with domain_split(layer, 3):
            layer(torch.randn(8, 4))
    with pytest.raises(ValueError, match="fewer than 1024 channels"):
        ReciprocalNorm(2048, distance="l1")
    with pytest.raises(ValueError, match="unknown RN distance"):
        ReciprocalNorm(8, distance="kl")
    ReciprocalNorm(600, distance="cosine")               # ungrouped: allowed, as in the original


def test_bn_checkpoint_loads_into_rn_network_both_statistic_sets():
    torch.manual_seed(0)
    bn_net = torchvision.models.resnet18(num_classes=5)
    with torch.no_grad():
        for m in bn_net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.weight.normal_()
    rn_net = convert_norm(torchvision.models.resnet18(num_classes=5), "rn")
    rn_net.load_state_dict(bn_net.state_dict())                       # strict: every key accounted for
    for name in ("bn1", "layer1.0.bn2", "layer4.1.bn2"):
        bn, rn = bn_net.get_submodule(name), rn_net.get_submodule(name)
        assert isinstance(rn, ReciprocalNorm)
        for d in ("source", "target"):
            torch.testing.assert_close(getattr(rn, f"running_mean_{d}"), bn.running_mean)
            torch.testing.assert_close(getattr(rn, f"running_var_{d}"), bn.running_var)
        torch.testing.assert_close(rn.weight, bn.weight)
        assert all(torch.all(g == 1) for g in rn.gate_parameters())
    # in evaluation an RN network with BN's statistics computes exactly what the BN network does
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(rn_net.eval()(x), bn_net.eval()(x), rtol=1e-4, atol=1e-4)


def test_rn_gates_get_their_own_lr_group():
    net = nn.ModuleDict({"backbone": convert_norm(torchvision.models.resnet18(), "rn")})
    groups = param_groups(list(net.items()), 0.1, {"norm_gates": 3.0})
    names = [g["name"] for g in groups]
    assert names == ["backbone", "norm_gates"]
    gates = groups[1]["params"]
    assert len(gates) == 4 * 20 and groups[1]["lr"] == pytest.approx(0.3)
    assert not {id(p) for p in gates} & {id(p) for p in groups[0]["params"]}
