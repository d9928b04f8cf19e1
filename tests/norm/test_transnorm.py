"""TransNorm (norm/transnorm.py) against its formula."""

import torch

from lightning_da.norm import TransNorm, domain_split


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
