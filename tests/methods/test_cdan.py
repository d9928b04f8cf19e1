"""Whole-step tests of CDAN / CDAN+E (Long et al. 2018, ``loss.py`` of the CDAN / RN code): one batch
through Lightning against a plain-torch replay on deep copies of the modules taken before the step.

The discriminator sees ``R(g (outer) f)`` (``g`` the detached softmax) or the randomized map
``R((f R_f) * (g R_g) / sqrt(d))``; ``L_CDAN = mean BCE(D, d)`` with source 1, target 0. CDAN+E
weights each row by ``w = 1 + exp(-H(p))`` whose gradient through ``H`` is reversed and scaled by the
GRL coefficient, normalised within source and within target and then by the total.
``L = CE + trade_off * L_CDAN + sum_k w_k L_k(z_t)``.

The replay is written from the paper and the original code, not from the library's losses, with SGD
(momentum, weight decay, per-module learning rates) and the ``inv`` schedule; the test compares every
logged term, the whole state_dict, and the optimiser's momentum buffers and learning rates.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from lightning_da.methods import CDAN
from step_replay import (BOTTLENECK, DISCRIMINATOR, SOURCE_LABELS, TinyBackbone, assert_close_logs,
                         assert_same_optimizer, assert_same_state, forward, make_batch, mcc, replay_step, reversed_grad,
                         row_entropy, run_one_batch, scheduler, sgd)


@pytest.mark.parametrize("entropy_conditioning", [False, True], ids=["cdan", "cdan_e"])
@pytest.mark.parametrize("randomized", [False, True], ids=["multilinear", "randomized"])
def test_cdan_step_matches_replay(entropy_conditioning, randomized):
    torch.manual_seed(0)
    coeff, trade_off, w_ent, w_mcc, rdim = 0.3, 0.7, 0.15, 0.25, 6
    lr_mult = {"backbone": 0.5, "classifier": 1.5, "discriminator": 2.0}
    model = CDAN(TinyBackbone(), 3, sgd(), scheduler(), bottleneck=BOTTLENECK, discriminator=DISCRIMINATOR,
                 grl={"alpha": 10.0, "max_iters": 100, "lo": coeff}, trade_off=trade_off, lr_mult=lr_mult,
                 extra_losses={"entropy": w_ent, "mcc": w_mcc}, entropy_conditioning=entropy_conditioning,
                 randomized=randomized, randomized_dim=rdim)
    ref = copy.deepcopy(model)
    xs, xt, _ = make_batch()
    logged = run_one_batch(model, {"source": (xs, SOURCE_LABELS), "target": (xt, torch.arange(7))})

    ref.train()
    ns, nt = len(xs), len(xt)
    f, z = forward(ref, torch.cat([xs, xt]))
    loss_cls = F.cross_entropy(z[:ns], SOURCE_LABELS)
    g = z.softmax(1).detach()
    if randomized:
        t = (f @ ref.random_f) * (g @ ref.random_g) / math.sqrt(rdim)
    else:
        t = torch.einsum("bc,bd->bcd", g, f).reshape(len(f), -1)  # g (outer) f, class-major
    d = ref.discriminator(reversed_grad(t, coeff)).reshape(-1)
    labels = torch.cat([torch.ones(ns), torch.zeros(nt)])
    bce = F.binary_cross_entropy_with_logits(d, labels, reduction="none")
    if entropy_conditioning:
        w = 1 + torch.exp(-reversed_grad(row_entropy(z), coeff))
        ws = torch.cat([w[:ns], torch.zeros(nt)])
        wt = torch.cat([torch.zeros(ns), w[ns:]])
        weight = ws / ws.sum().detach() + wt / wt.sum().detach()
        loss_cdan = (weight * bce).sum() / weight.sum().detach()
    else:
        loss_cdan = bce.mean()
    ent, conf = row_entropy(z[ns:]).mean(), mcc(z[ns:])
    loss = loss_cls + trade_off * loss_cdan + w_ent * ent + w_mcc * conf
    opt = replay_step(ref, loss, lr_mult, ["backbone", "bottleneck", "classifier", "discriminator"])

    assert_close_logs(logged, {"train/loss": loss, "train/loss_cls": loss_cls, "train/loss_transfer": loss_cdan,
                               "train/loss_entropy": ent, "train/loss_mcc": conf, "train/grl_coeff": coeff,
                               "train/source_acc": (z[:ns].argmax(1) == SOURCE_LABELS).float().mean()})
    assert_same_state(model, ref)
    assert_same_optimizer(model, opt)
    if randomized:  # the projections are fixed buffers, not trained
        assert set(model.state_dict()) >= {"random_f", "random_g"}
        assert not any(n.startswith("random_") for n, _ in model.named_parameters())
