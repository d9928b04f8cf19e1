"""BSP's batch spectral penalty (losses/spectral.py) against a hand-worked example and power iteration,
with the gradient of the top singular value."""

import pytest
import torch

from lightning_da.losses.spectral import batch_spectral_penalty


def test_bsp_hand_worked_diagonal():
    fs = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # singular values 3, 1
    ft = torch.tensor([[0.0, 2.0], [0.5, 0.0]])  # singular values 2, 0.5
    assert batch_spectral_penalty(fs, ft).item() == pytest.approx(9.0 + 4.0)
    assert batch_spectral_penalty(fs, ft, k=2).item() == pytest.approx(9.0 + 1.0 + 4.0 + 0.25)


def test_bsp_matches_power_iteration_and_its_gradient():
    """sigma_1^2 is the top eigenvalue of F^T F; its gradient is 2 sigma_1 u v^T."""
    g = torch.Generator().manual_seed(1)
    fs = torch.randn(5, 4, generator=g, requires_grad=True)
    ft = torch.randn(7, 4, generator=g, requires_grad=True)
    loss = batch_spectral_penalty(fs, ft)
    gs, gt = torch.autograd.grad(loss, (fs, ft))
    for f, grad in ((fs, gs), (ft, gt)):
        m = (f.T @ f).detach().double()
        v = torch.ones(4, dtype=torch.double)
        for _ in range(500):
            v = m @ v
            v = v / v.norm()
        top = float(v @ m @ v)
        u = f.detach().double() @ v
        torch.testing.assert_close(grad.double(), 2 * torch.outer(u, v), rtol=1e-4, atol=1e-5)
        loss = loss - top
    assert abs(loss.item()) < 1e-4


def test_bsp_rejects_k_zero():
    with pytest.raises(ValueError, match="k"):
        batch_spectral_penalty(torch.randn(3, 2), torch.randn(3, 2), k=0)
