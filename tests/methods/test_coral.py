"""Whole-step test of Deep CORAL (Sun & Saenko 2016): ``CE + w * ||C_S - C_T||_F^2 / (4 d^2)`` (and
TLlib's form), replayed in plain torch on deep copies (:mod:`step_replay.one_loss`).
"""

import pytest
import torch

from lightning_da.methods.coral import DeepCORAL
from step_replay.one_loss import check, make, sized_batch


def coral_replay(x_s, x_t, form):
    def cov(x):
        n = len(x)
        ones = torch.ones(1, n)
        return (x.t() @ x - (ones @ x).t() @ (ones @ x) / n) / (n - 1)  # the paper's eq. 2-3

    d = x_s.shape[1]
    diff = cov(x_s) - cov(x_t)
    if form == "paper":
        return (diff ** 2).sum() / (4 * d ** 2)
    return ((x_s.mean(0) - x_t.mean(0)) ** 2).mean() + (diff ** 2).mean()


@pytest.mark.parametrize("layer,form", [("logits", "paper"), ("features", "tllib")])
def test_coral_step(layer, form):
    trade_off = 2.5
    lr_mult = {"backbone": 0.5, "classifier": 2.0}
    model = make(DeepCORAL, layer=layer, form=form, trade_off=trade_off)

    def transfer(ref, f, z, ns):
        x = z if layer == "logits" else f
        return coral_replay(x[:ns], x[ns:], form)

    check(model, sized_batch(5, 7), transfer, trade_off, lr_mult)
