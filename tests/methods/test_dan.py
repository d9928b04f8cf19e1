"""Whole-step tests of DAN (Long et al. 2015): ``CE + w * MK-MMD^2(f_s, f_t)``, Gaussian kernels at
``2 a mean(D)``, replayed in plain torch on deep copies (:mod:`step_replay.one_loss`, the kernels
written from the paper), with SGD (momentum, weight decay, per-module learning rates) on source and
target batches of different contents (and sizes, where the estimate allows).
"""

from lightning_da.methods.dan import DAN
from step_replay.one_loss import check, make, mmd2, multi_kernel, sized_batch


def test_dan_step_unbiased_unequal_batches():
    alphas, trade_off = (0.5, 1.0, 3.0), 0.7
    lr_mult = {"backbone": 0.5, "classifier": 2.0}
    model = make(DAN, alphas=alphas, estimator="unbiased", offset=False, trade_off=trade_off,
                 extra_losses={"entropy": 0.2})

    def transfer(ref, f, z, ns):
        return mmd2(multi_kernel(f, alphas), ns, "unbiased")

    check(model, sized_batch(5, 7), transfer, trade_off, lr_mult, w_ent=0.2)


def test_dan_step_default_linear_estimate_with_offset():
    trade_off, n = 1.3, 6
    lr_mult = {"backbone": 0.5, "classifier": 2.0}
    model = make(DAN, trade_off=trade_off)  # TLlib's defaults: alphas 2^-3..2^1, linear, offset

    def transfer(ref, f, z, ns):
        return mmd2(multi_kernel(f, (0.125, 0.25, 0.5, 1.0, 2.0)), ns, "linear") + 2 / (ns - 1)

    check(model, sized_batch(n, n, seed=3), transfer, trade_off, lr_mult)
