"""Whole-step test of BNM (Cui et al. 2020): ``CE - w * ||softmax(z_t)||_* / min(B, C)`` (the official
code's mean), replayed in plain torch on deep copies (:mod:`step_replay.one_loss`).
"""

import torch

from lightning_da.methods.bnm import BNM
from step_replay.one_loss import check, make, sized_batch


def test_bnm_step():
    trade_off = 0.4
    lr_mult = {"bottleneck": 3.0}
    model = make(BNM, trade_off=trade_off, lr_mult=lr_mult, extra_losses={"entropy": 0.1})

    def transfer(ref, f, z, ns):
        p = z[ns:].softmax(1)
        return -torch.linalg.matrix_norm(p, ord="nuc") / min(p.shape)

    check(model, sized_batch(5, 7), transfer, trade_off, lr_mult, w_ent=0.1)
