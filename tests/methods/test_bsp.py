"""Whole-step test of BSP on CDAN(+E) (Chen et al. 2019): one batch through Lightning against a
plain-torch replay on deep copies, written from the paper (not from the library's losses): CDAN(+E)'s
loss ``+ w_bsp * (sum of the k largest eigenvalues of F_s^T F_s and F_t^T F_t)``, the eigenvalues by
``eigvalsh`` (not an SVD), with SGD (momentum, weight decay, per-module learning rates) on source and
target batches of different sizes and contents.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from lightning_da.methods.bsp import BSP
from step_replay import (NS, NT, TinyBackbone, assert_close_logs, assert_same_state, batch, reversed_grad, row_entropy,
                         run_one_batch, sgd, sgd_step, source_acc)


@pytest.mark.parametrize("entropy_conditioning", [True, False], ids=["cdan_e", "cdan"])
def test_bsp_step_matches_replay(entropy_conditioning):
    torch.manual_seed(0)
    coeff, trade_off, w_bsp, k, w_ent = 0.3, 0.7, 0.05, 2, 0.1
    lr_mult = {"backbone": 0.5, "discriminator": 2.0}
    model = BSP(TinyBackbone(), 3, sgd(), bottleneck={"dim": 5, "batch_norm": True, "relu": True, "dropout": 0.0},
                discriminator={"hidden": 4, "num_hidden": 1, "batch_norm": True, "dropout": 0.0},
                grl={"alpha": 10.0, "max_iters": 100, "lo": coeff}, trade_off=trade_off, lr_mult=lr_mult,
                extra_losses={"entropy": w_ent}, entropy_conditioning=entropy_conditioning, bsp_weight=w_bsp, bsp_k=k)
    ref = copy.deepcopy(model)
    b = batch()
    logged = run_one_batch(model, b)

    (xs, ys), (xt, _) = b["source"], b["target"]
    ref.train()
    f = ref.bottleneck(ref.backbone(torch.cat([xs, xt])))
    z = ref.classifier(f)
    loss_cls = F.cross_entropy(z[:NS], ys)
    g = z.softmax(1).detach()
    t = torch.einsum("bc,bd->bcd", g, f).reshape(len(f), -1)
    d = ref.discriminator(reversed_grad(t, coeff)).reshape(-1)
    labels = torch.cat([torch.ones(NS), torch.zeros(NT)])
    bce = F.binary_cross_entropy_with_logits(d, labels, reduction="none")
    if entropy_conditioning:
        w = 1 + torch.exp(-reversed_grad(row_entropy(z), coeff))
        ws, wt = torch.cat([w[:NS], torch.zeros(NT)]), torch.cat([torch.zeros(NS), w[NS:]])
        weight = ws / ws.sum().detach() + wt / wt.sum().detach()
        loss_cdan = (weight * bce).sum() / weight.sum().detach()
    else:
        loss_cdan = bce.mean()
    # sigma_i(F)^2 are the eigenvalues of F^T F: the k largest, per domain
    penalty = (torch.linalg.eigvalsh(f[:NS].T @ f[:NS])[-k:].sum()
               + torch.linalg.eigvalsh(f[NS:].T @ f[NS:])[-k:].sum())
    loss_transfer = loss_cdan + w_bsp * penalty
    ent = row_entropy(z[NS:]).mean()
    loss = loss_cls + trade_off * loss_transfer + w_ent * ent
    sgd_step(ref, loss, lr_mult, ["backbone", "bottleneck", "classifier", "discriminator"])

    assert_close_logs(logged, {"train/loss": loss, "train/loss_cls": loss_cls, "train/loss_transfer": loss_transfer,
                               "train/loss_bsp": penalty, "train/loss_entropy": ent, "train/grl_coeff": coeff,
                               "train/source_acc": source_acc(z, ys)}, rtol=1e-4)
    assert_same_state(model, ref, rtol=1e-4, atol=1e-5)
