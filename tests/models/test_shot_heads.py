"""SHOT's weight-normalised classifier (models/shot_heads.py) against the formula, with gradients."""

import torch

from lightning_da.models.shot_heads import WeightNormClassifier


def test_weight_norm_classifier():
    torch.manual_seed(3)
    head = WeightNormClassifier(4, 3)
    torch.manual_seed(3)
    default = torch.nn.Linear(4, 3)
    torch.testing.assert_close(head.weight, default.weight)  # init: W = the default Linear weight, g = ||v||
    assert torch.equal(head.bias, torch.zeros(3))
    with torch.no_grad():
        head.weight_g.mul_(torch.tensor([[2.0], [0.5], [3.0]]))
        head.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = torch.randn(5, 4)
    v, gl = head.weight_v.detach().clone().requires_grad_(), head.weight_g.detach().clone().requires_grad_()
    w = torch.stack([gl[k, 0] * v[k] / torch.sqrt((v[k] ** 2).sum()) for k in range(3)])
    out_ref = x @ w.T + head.bias.detach()
    out = head(x)
    torch.testing.assert_close(out, out_ref)
    (out * torch.arange(3.0)).sum().backward()
    (out_ref * torch.arange(3.0)).sum().backward()
    torch.testing.assert_close(head.weight_v.grad, v.grad)
    torch.testing.assert_close(head.weight_g.grad, gl.grad)
    assert set(head.state_dict()) == {"weight_g", "weight_v", "bias"}  # torch weight_norm's (SHOT checkpoint) names
