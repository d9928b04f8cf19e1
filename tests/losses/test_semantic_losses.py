"""SSAN's semantic losses (losses/semantic.py) against slow per-class references (as the original code
loops): the implicit semantic correlation loss, the centroid alignment with its selection, and the
prototype labels and their agreement."""

import math

import pytest
import torch
import torch.nn.functional as F

from lightning_da.losses.semantic import (agreement_mask, centroid_alignment_loss, cosine_threshold,
                                          implicit_semantic_correlation_loss, prototype_labels)
from step_replay.hda import isc_reference


C = 4


def toy(seed=0, n_s=23, n_l=9, n_u=17, d=5):
    g = torch.Generator().manual_seed(seed)
    y_s = torch.cat([torch.arange(C), torch.randint(0, C, (n_s - C,), generator=g)])
    y_l = torch.cat([torch.arange(C), torch.randint(0, C, (n_l - C,), generator=g)])
    return (torch.randn(n_s, C, generator=g, requires_grad=True), y_s, torch.randn(n_l, C, generator=g, requires_grad=True), y_l,
            torch.randn(n_s, d, generator=g, requires_grad=True), torch.randn(n_l, d, generator=g, requires_grad=True),
            torch.randn(n_u, d, generator=g, requires_grad=True), torch.randn(n_u, C, generator=g))


def test_isc_matches_reference_with_gradients_through_the_source():
    z_s, y_s, z_l, y_l, *_ = toy()
    loss, hard, soft = implicit_semantic_correlation_loss(z_s, y_s, z_l, y_l, alpha=0.1, temperature=5.0)
    ref = isc_reference(z_s, y_s, z_l, y_l, 0.1, 5.0)
    assert torch.allclose(loss, ref, atol=1e-6) and torch.allclose(hard + soft, ref, atol=1e-6)
    g, g_ref = torch.autograd.grad(loss, (z_s, z_l)), torch.autograd.grad(ref, (z_s, z_l))
    assert torch.allclose(g[0], g_ref[0], atol=1e-7) and torch.allclose(g[1], g_ref[1], atol=1e-6)
    assert g[0].abs().sum() > 0  # q_k is not detached: the source logits get gradient from L_soft
    # alpha = 1: plain CE on the labelled target (the flag's quirk)
    loss1, _, soft1 = implicit_semantic_correlation_loss(z_s, y_s, z_l, y_l, alpha=1.0)
    assert torch.allclose(loss1, F.cross_entropy(z_l, y_l)) and soft1 == 0


def esa_reference(f_s, y_s, f_t, y_t, prototype):
    loss = 0
    for k in range(C):
        mu_s, mu_t = f_s[y_s == k].mean(0), f_t[y_t == k].mean(0)
        loss = loss + ((mu_s - mu_t) ** 2).sum()
        if prototype == "three":
            mu_st = torch.cat([f_s[y_s == k], f_t[y_t == k]]).sum(0) / ((y_s == k).sum() + (y_t == k).sum())
            loss = loss + ((mu_s - mu_st) ** 2).sum() + ((mu_t - mu_st) ** 2).sum()
    return loss


@pytest.mark.parametrize("prototype", ["three", "two"])
def test_centroid_alignment_matches_reference_with_selection(prototype):
    _, y_s, _, y_l, f_s, f_l, f_u, z_u = toy(1)
    y_u = z_u.argmax(1)
    keep = torch.arange(len(y_u)) % 3 != 0
    f_t, y_t = torch.cat([f_l, f_u]), torch.cat([y_l, y_u])
    mask = torch.cat([torch.ones(len(y_l), dtype=torch.bool), keep])
    loss = centroid_alignment_loss(f_s, y_s, f_t, y_t, C, prototype, mask)
    ref = esa_reference(f_s, y_s, torch.cat([f_l, f_u[keep]]), torch.cat([y_l, y_u[keep]]), prototype)
    assert torch.allclose(loss, ref, atol=1e-5)
    g, g_ref = torch.autograd.grad(loss, (f_s, f_u)), torch.autograd.grad(ref, (f_s, f_u))
    assert torch.allclose(g[0], g_ref[0], atol=1e-6) and torch.allclose(g[1], g_ref[1], atol=1e-6)
    assert g[1][~keep].abs().sum() == 0 and g[1][keep].abs().sum() > 0


@pytest.mark.parametrize("mode", ["Cosine", "Euclidean", "Cosine_threshold", "Euclidean_threshold"])
def test_prototype_labels_and_agreement(mode):
    _, y_s, _, y_l, f_s, f_l, f_u, z_u = toy(2)
    f_ref, y_ref = torch.cat([f_s, f_l]).detach(), torch.cat([y_s, y_l])
    centers = torch.stack([f_ref[y_ref == k].mean(0) for k in range(C)])
    expected = []
    for f in f_u.detach():
        if mode.startswith("Cosine"):
            scores = torch.tensor([F.cosine_similarity(f, c, dim=0) for c in centers])
            threshold = 1.0 / (1 + math.exp(-0.8 * (3 + 1))) - 0.01
        else:
            scores = torch.tensor([-((f - c) ** 2).sum() for c in centers])
            threshold = 0.2
        label = int(scores.argmax())
        expected.append(-1 if mode.endswith("threshold") and scores.max() < threshold else label)
    got = prototype_labels(f_u, f_ref, y_ref, C, mode, step=3)
    assert got.tolist() == expected
    y_net, keep = agreement_mask(z_u, f_u, f_ref, y_ref, C, mode, step=3)
    assert y_net.tolist() == z_u.argmax(1).tolist()
    assert keep.tolist() == [a == b for a, b in zip(y_net.tolist(), expected)]
    if mode == "Euclidean_threshold":
        assert not keep.any()  # the original's quirk: -d^2 <= 0 < 0.2 rejects every sample
    assert abs(cosine_threshold(0) - (1 / (1 + math.exp(-0.8)) - 0.01)) < 1e-12
    assert agreement_mask(z_u, f_u, f_ref, y_ref, C, None)[1].all()
