"""Residual sparse training (models/rst.py) on a small random-weight CLIP: the reset of small changes,
the DSP count, and the exact sparse checkpoint."""

import copy

import pytest
import torch

from lightning_da.models.clip import CMKDHead
from lightning_da.models.rst import ResidualSparseTraining, load_sparse_checkpoint, save_sparse_checkpoint


def test_rst_resets_small_changes_and_counts_dsp(tiny_clip):
    enc = copy.deepcopy(tiny_clip)
    rst = ResidualSparseTraining(enc, tau=1e-3)
    p = next(enc.parameters())
    w0 = p.detach().clone()
    delta = torch.zeros_like(p).flatten()
    delta[:4] = torch.tensor([5e-4, -9e-4, 2e-3, -0.5])   # two within tau (reset), two beyond (kept)
    with torch.no_grad():
        p.add_(delta.view_as(p))
    rst.reset_small_changes(enc)
    kept = (p.detach() != w0).flatten()
    assert kept.sum() == 2 and kept[2] and kept[3] and torch.equal(p.detach().flatten()[:2], w0.flatten()[:2])
    head = CMKDHead(32, 3)
    assert rst.changed(enc) == 2
    assert rst.dsp(enc, head) == pytest.approx((2 + sum(q.numel() for q in head.parameters())) / 1e6)


def test_rst_sparse_checkpoint_round_trips_exactly(tmp_path, tiny_clip):
    pretrained = copy.deepcopy(tiny_clip)
    enc = copy.deepcopy(tiny_clip)
    rst = ResidualSparseTraining(enc, tau=1e-6)
    torch.manual_seed(3)
    with torch.no_grad():
        for q in enc.parameters():
            q.add_(torch.randn_like(q) * 1e-3 * (torch.rand_like(q) < 0.05))
        # a change where w0 + (w - w0) != w in float32: the exact value must still come back
        name = next(iter(rst.reference))
        for w0_holder in (rst.reference[name], next(pretrained.parameters())):
            w0_holder.view(-1)[0] = 1.0
        next(enc.parameters()).view(-1)[0] = 3e-8
    rst.reset_small_changes(enc)
    head = CMKDHead(32, 3)
    path = tmp_path / "rst.pt"
    save_sparse_checkpoint(str(path), rst, enc, head, note="test")
    w, w0 = torch.tensor(3e-8), torch.tensor(1.0)
    assert (w0 + (w - w0)) != w   # the float32 case the exact entries are for
    rebuilt, rebuilt_head = copy.deepcopy(pretrained), CMKDHead(32, 3)
    assert load_sparse_checkpoint(str(path), rebuilt, rebuilt_head) == {"note": "test"}
    for (n, a), b in zip(enc.named_parameters(), rebuilt.parameters()):
        assert torch.equal(a, b), n
    for k, v in head.state_dict().items():
        assert torch.equal(v, rebuilt_head.state_dict()[k])
    assert torch.load(path, weights_only=False)["encoder_residuals"]["visual.conv1.weight"]["residual"].is_sparse
    with pytest.raises(ValueError, match="not an RST sparse checkpoint"):
        torch.save({"x": 1}, tmp_path / "other.pt")
        load_sparse_checkpoint(str(tmp_path / "other.pt"), rebuilt, rebuilt_head)
