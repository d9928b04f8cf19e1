"""Whole-step test of MCC (Jin et al. 2020): ``CE + w * class confusion of softmax(z_t / T)``, replayed
in plain torch on deep copies (:mod:`step_replay.one_loss`).
"""

import torch

from lightning_da.methods.mcc import MCC
from step_replay.one_loss import check, make, sized_batch


def mcc_replay(z_t, temperature):
    b, c = z_t.shape
    p = (z_t / temperature).softmax(1)
    h = -(p * torch.log(p + 1e-5)).sum(1)
    w = (1 + torch.exp(-h)).detach()
    w = b * w / w.sum()
    conf = p.t() @ torch.diag(w) @ p  # class confusion, eq. 5
    conf = conf / conf.sum(1, keepdim=True)  # category normalisation, eq. 6
    return (conf.sum() - conf.trace()) / c


def test_mcc_step():
    temperature, trade_off = 1.7, 0.6
    lr_mult = {"backbone": 0.5, "classifier": 2.0}
    model = make(MCC, temperature=temperature, trade_off=trade_off)
    check(model, sized_batch(5, 7), lambda ref, f, z, ns: mcc_replay(z[ns:], temperature), trade_off, lr_mult)
