"""The norm group: RN against a slow reference, DSBN / TransNorm / AdaBN semantics, conversion of
real backbones, the domain-split errors, and RN's gate clamp and learning-rate group in a real run."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torch import nn

from lightning_da.norm import (DSBN, DomainSplitError, ReciprocalNorm, TransNorm, adabn_layers, adapt_batchnorm,
                               convert_norm, domain_split)
from lightning_da.optim import param_groups


# ---------------------------------------------------------------------------------------------- RN
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


@pytest.mark.parametrize("kind", ["dsbn", "transnorm", "rn"])
def test_domain_aware_norm_without_split_stops(kind):
    layer = convert_norm(nn.BatchNorm2d(3), kind)
    with pytest.raises(DomainSplitError, match="without a domain split"):
        layer(torch.randn(4, 3, 2, 2))
    layer.eval()
    assert layer(torch.randn(4, 3, 2, 2)).shape == (4, 3, 2, 2)    # evaluation needs no split


# ------------------------------------------------------------------------------------ conversion
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


# ------------------------------------------------------------------------------------ DSBN, TransNorm
def test_dsbn_routes_rows_to_their_domain_statistics():
    torch.manual_seed(0)
    layer = DSBN(3, momentum=1.0)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2, 3], [4, 5, 6]]))
    xs, xt = torch.randn(5, 3, 4, 4), torch.randn(3, 3, 4, 4) * 4 + 2          # unequal halves are fine
    with domain_split(layer, 5):
        y = layer(torch.cat([xs, xt]))
    bs, bt = nn.BatchNorm2d(3, momentum=1.0), nn.BatchNorm2d(3, momentum=1.0)
    with torch.no_grad():
        bs.weight.copy_(layer.weight[0])
        bt.weight.copy_(layer.weight[1])
    torch.testing.assert_close(y[:5], bs(xs), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y[5:], bt(xt), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.running_mean_source, bs.running_mean)
    torch.testing.assert_close(layer.running_var_target, bt.running_var)
    layer.eval(), bt.eval()
    torch.testing.assert_close(layer(xs), bt(xs), rtol=1e-4, atol=1e-5)                # eval: target branch
    shared = DSBN(3, shared_affine=True)
    assert shared.weight.shape == (3,)


def test_transnorm_matches_its_formula():
    torch.manual_seed(0)
    layer = TransNorm(4)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.normal_()
    xs, xt = torch.randn(6, 4, 3, 3), torch.randn(6, 4, 3, 3) * 2 + 1
    with domain_split(layer, 6):
        y = layer(torch.cat([xs, xt]))
    fs, ft = xs.transpose(0, 1).reshape(4, -1), xt.transpose(0, 1).reshape(4, -1)
    dist = (fs.mean(1) / torch.sqrt(fs.var(1) + 1e-5) - ft.mean(1) / torch.sqrt(ft.var(1) + 1e-5)).abs()
    alpha = 4 * (1 / (1 + dist)) / (1 / (1 + dist)).sum()
    for h, f, out in ((xs, fs, y[:6]), (xt, ft, y[6:])):
        z = (h - f.mean(1).view(1, 4, 1, 1)) / torch.sqrt(f.var(1, unbiased=False).view(1, 4, 1, 1) + 1e-5)
        z = z * layer.weight.view(1, 4, 1, 1) + layer.bias.view(1, 4, 1, 1)
        torch.testing.assert_close(out, z * (1 + alpha).view(1, 4, 1, 1), rtol=1e-4, atol=1e-4)


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


# ------------------------------------------------------------------------------------ AdaBN
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


# ------------------------------------------------------------------------------------ in methods
def test_method_that_cannot_split_refuses_domain_aware_norm():
    from functools import partial

    from lightning_da.methods import SourceOnly
    from lightning_da.models import build_backbone

    with pytest.raises(DomainSplitError, match="cannot split its batches"):
        SourceOnly(build_backbone("lenet_bn", input_size=32), 10, optimizer=partial(torch.optim.SGD, lr=0.1),
                   norm=partial(convert_norm, kind="rn"))


def test_rn_gates_get_their_own_lr_group():
    net = nn.ModuleDict({"backbone": convert_norm(torchvision.models.resnet18(), "rn")})
    groups = param_groups(list(net.items()), 0.1, {"norm_gates": 3.0})
    names = [g["name"] for g in groups]
    assert names == ["backbone", "norm_gates"]
    gates = groups[1]["params"]
    assert len(gates) == 4 * 20 and groups[1]["lr"] == pytest.approx(0.3)
    assert not {id(p) for p in gates} & {id(p) for p in groups[0]["params"]}


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
