"""Domain-specific BatchNorm (norm/dsbn.py): each domain's rows get their own statistics."""

import torch
from torch import nn

from lightning_da.norm import DSBN, domain_split


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
