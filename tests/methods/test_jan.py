"""Whole-step tests of JAN and JAN-A (Long et al. 2017): ``CE + w * JMMD`` with the product of the
feature kernels and a fixed-width softmax kernel; JAN-A adds ``theta = W . + b`` per layer, trained to
*ascend* the JMMD. Replayed in plain torch on deep copies (:mod:`step_replay.one_loss`).
"""

import copy

import torch

from lightning_da.methods.jan import JAN
from step_replay import changed_any
from step_replay.one_loss import check, make, mmd2, multi_kernel, sized_batch, sq_dists


def jmmd_replay(f, z, ns, alphas, sigma, estimator, thetas=None):
    p = z.softmax(1)
    if thetas is not None:  # the affine maps, without reversal: the test negates their gradients
        f, p = thetas[0].linear(f), thetas[1].linear(p)
    k = multi_kernel(f, alphas) * torch.exp(-sq_dists(p) / (2 * sigma ** 2))
    return mmd2(k, ns, estimator)


def test_jan_step_biased_unequal_batches():
    alphas, sigma, trade_off = (0.25, 2.0), 0.6, 0.8
    lr_mult = {"backbone": 0.5, "classifier": 2.0}
    model = make(JAN, feature_alphas=alphas, softmax_sigma=sigma, estimator="biased", offset=False,
                 trade_off=trade_off)
    assert model.thetas is None
    check(model, sized_batch(5, 7), lambda ref, f, z, ns: jmmd_replay(f, z, ns, alphas, sigma, "biased"),
          trade_off, lr_mult)


def test_jan_adversarial_step_thetas_ascend_the_jmmd():
    alphas, sigma, trade_off = (0.5, 1.0), 0.92, 0.9
    model = make(JAN, feature_alphas=alphas, softmax_sigma=sigma, adversarial=True, trade_off=trade_off)
    before = copy.deepcopy(model)
    lr_mult = {"backbone": 0.5, "classifier": 2.0, "thetas": 0.1}  # TLlib: the thetas at 0.1 x lr

    def transfer(ref, f, z, ns):
        return jmmd_replay(f, z, ns, alphas, sigma, "unbiased", ref.thetas) + 2 / (ns - 1)

    check(model, sized_batch(6, 6, seed=1), transfer, trade_off, lr_mult, negate=("thetas",))
    assert changed_any(model, before, "thetas")
