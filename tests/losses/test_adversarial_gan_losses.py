"""ADDA's GAN-form losses (losses/adversarial_gan.py) by hand, with gradients."""

import math

import torch

from lightning_da.losses.adversarial_gan import adda_discriminator_loss, adda_generator_loss


def sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def test_adda_losses_by_hand_and_gradients():
    d_s, d_t = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.0, -0.5], requires_grad=True)
    want_d = 0.5 * (-(math.log(sig(0.5)) + math.log(sig(-1.0))) / 2
                    - (math.log(1 - sig(2.0)) + math.log(1 - sig(0.0)) + math.log(1 - sig(-0.5))) / 3)
    assert abs(adda_discriminator_loss(d_s, d_t.detach()).item() - want_d) < 1e-6
    loss_g = adda_generator_loss(d_t)  # -log sigma(d_t): target labelled source
    assert abs(loss_g.item() - (-(math.log(sig(2.0)) + math.log(sig(0.0)) + math.log(sig(-0.5))) / 3)) < 1e-6
    loss_g.backward()
    # d/dz -log sigma(z) = -(1 - sigma(z)): pushes every target logit towards "source", hardest where D is surest
    want = torch.tensor([-(1 - sig(v)) / 3 for v in (2.0, 0.0, -0.5)])
    torch.testing.assert_close(d_t.grad, want)
    assert (d_t.grad < 0).all() and d_t.grad[2] < d_t.grad[0]
