"""Pseudo labels (pseudo_labels.py): SHOT-style clustering and the per-sample store."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_da.data.batches import target_indices
from lightning_da.pseudo_labels import PseudoLabelStore, cluster_pseudo_labels


# ---------------------------------------------------------------------------------------------- reference
def loop_reference(features, probs, rounds=2, eps=1e-8):
    """Plain-Python clustering written from the spec, one sample and one class at a time."""
    feats = [[float(v) for v in row] + [1.0] for row in features]
    feats = [[v / math.sqrt(sum(u * u for u in row)) for v in row] for row in feats]
    weights = [[float(v) for v in row] for row in probs]
    n, k, d = len(feats), len(weights[0]), len(feats[0])
    labels = None
    for r in range(rounds):
        if r > 0:
            weights = [[1.0 if c == labels[i] else 0.0 for c in range(k)] for i in range(n)]
        centroids = []
        for c in range(k):
            mass = sum(weights[i][c] for i in range(n))
            centroids.append([sum(weights[i][c] * feats[i][j] for i in range(n)) / (mass + eps) for j in range(d)])
        labels = []
        for i in range(n):
            dists = []
            for c in range(k):
                norm_c = math.sqrt(sum(v * v for v in centroids[c]))
                dot = sum(a * b for a, b in zip(feats[i], centroids[c]))
                dists.append(1.0 - dot / norm_c)  # feats[i] is unit
            labels.append(min(range(k), key=lambda c: dists[c]))
    return labels


def soft_round(features, probs, eps=1e-8):
    """Only the first (soft) round, computed independently with torch.cdist-free cosine distance."""
    f = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.double)], 1)
    f = f / f.norm(dim=1, keepdim=True)
    p = probs.double()
    c = (p.T @ f) / (p.sum(0)[:, None] + eps)
    dist = 1 - (f @ c.T) / c.norm(dim=1)[None, :]
    return dist.argmin(1)


# A 4-point, 2-class case where one hard round changes a label:
# features -3, 1, 2, 3 (1-D; after appending 1 and normalising they are unit vectors in 2-D),
# p(class 0) = 0.9, 0.9, 0.9, 0.4. The soft centroids put x=1 with class 0 (labels 0,0,1,1); the hard
# centroid of class 1 is then the mean of the directions of x=2 and x=3, which is closer to x=1 than
# the class-0 centroid (mean of -3 and 1), so the hard round gives 0,1,1,1.
TINY_X = torch.tensor([[-3.0], [1.0], [2.0], [3.0]])
TINY_P = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])


def test_tiny_case_matches_loop_reference_and_hand_result():
    assert loop_reference(TINY_X.tolist(), TINY_P.tolist(), rounds=1) == [0, 0, 1, 1]
    assert loop_reference(TINY_X.tolist(), TINY_P.tolist(), rounds=2) == [0, 1, 1, 1]
    for rounds in (1, 2, 3):
        got = cluster_pseudo_labels(TINY_X, TINY_P, rounds=rounds)
        assert got.dtype == torch.long and got.shape == (4,)
        assert got.tolist() == loop_reference(TINY_X.tolist(), TINY_P.tolist(), rounds=rounds)
    assert cluster_pseudo_labels(TINY_X, TINY_P).tolist() == [0, 1, 1, 1]  # default rounds=2 = the original


def test_rounds_one_is_the_soft_assignment():
    assert cluster_pseudo_labels(TINY_X, TINY_P, rounds=1).tolist() == soft_round(TINY_X, TINY_P).tolist()
    assert not torch.equal(cluster_pseudo_labels(TINY_X, TINY_P, rounds=1), cluster_pseudo_labels(TINY_X, TINY_P, rounds=2))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 5, generator=g)
    p = torch.softmax(torch.randn(40, 4, generator=g), 1)
    assert torch.equal(cluster_pseudo_labels(x, p, rounds=1), soft_round(x, p))


def test_random_case_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(25, 3, generator=g) * 2
    p = torch.softmax(torch.randn(25, 3, generator=g) * 2, 1)
    for rounds in (1, 2, 4):
        assert cluster_pseudo_labels(x, p, rounds=rounds).tolist() == loop_reference(x.tolist(), p.tolist(), rounds)


def test_recovers_true_clusters_despite_wrong_probs():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[6.0, 0.0], [-3.0, 5.2], [-3.0, -5.2]])
    truth = torch.arange(3).repeat_interleave(30)
    x = centers[truth] + 0.4 * torch.randn(90, 2, generator=g)
    probs = torch.full((90, 3), 0.1)
    probs[torch.arange(90), truth] = 0.8
    uniform = torch.tensor([0, 31, 62, 63])
    probs[uniform] = 1 / 3
    wrong = torch.tensor([1, 2, 32, 33, 64])  # confidently pointing at the next class
    probs[wrong] = 0.05
    probs[wrong, (truth[wrong] + 1) % 3] = 0.9
    assert not torch.equal(probs.argmax(1), truth)
    labels = cluster_pseudo_labels(x, probs)
    assert labels.tolist() == truth.tolist()
    # also with the features in float32 on the default device, and one soft round only
    assert cluster_pseudo_labels(x.float(), probs, rounds=1).tolist() == truth.tolist()


def test_class_without_members_gets_no_samples():
    # class 2 carries soft weight but wins no sample in the soft round: its hard centroid would be zero
    # (a NaN cosine distance in the original); it must simply receive no sample.
    x = torch.tensor([[-4.0, 0.0], [-3.5, 0.5], [4.0, 0.0], [3.5, -0.5]])
    p = torch.tensor([[0.6, 0.1, 0.3], [0.6, 0.1, 0.3], [0.1, 0.6, 0.3], [0.1, 0.6, 0.3]])
    assert cluster_pseudo_labels(x, p, rounds=1).tolist() == [0, 0, 1, 1]
    assert cluster_pseudo_labels(x, p, rounds=3).tolist() == [0, 0, 1, 1]
    # probabilities with an all-zero column: that class is never chosen
    p0 = torch.tensor([[0.0, 0.2, 0.8], [0.0, 0.9, 0.1], [0.0, 0.5, 0.5], [0.0, 0.3, 0.7]])
    assert 0 not in cluster_pseudo_labels(x, p0, rounds=1).tolist()


def test_clustering_input_errors():
    with pytest.raises(ValueError, match="rows"):
        cluster_pseudo_labels(torch.zeros(3, 2), torch.ones(4, 2))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        cluster_pseudo_labels(torch.zeros(3), torch.ones(3, 2))
    with pytest.raises(ValueError, match="rounds"):
        cluster_pseudo_labels(TINY_X, TINY_P, rounds=0)
    with pytest.raises(ValueError, match="empty"):
        cluster_pseudo_labels(torch.zeros(0, 2), torch.zeros(0, 2))


def test_store_update_get_mask():
    store = PseudoLabelStore(10, 3)
    assert store.labels.dtype == torch.long and store.labels.tolist() == [-1] * 10
    assert store.confidence.tolist() == [0.0] * 10
    assert not store.has_labels and not store.valid.any() and len(store) == 10
    store.update(torch.tensor([2, 5, 7]), torch.tensor([0, 2, 1]), confidence=torch.tensor([0.5, 0.25, 0.75]))
    assert store.has_labels and store.num_labelled == 3
    assert store[torch.tensor([5, 2, 0])].tolist() == [2, 0, -1]
    assert store.mask([5, 2, 0]).tolist() == [True, True, False]
    assert store.valid.nonzero().flatten().tolist() == [2, 5, 7]
    assert store.confidence_of([7, 1]).tolist() == [0.75, 0.0]
    store.update([5], [1])  # no confidence given: 1
    assert store[[5]].tolist() == [1] and store.confidence_of([5]).tolist() == [1.0]
    store.update([2], [-1])  # -1 removes a label
    assert store.mask([2]).tolist() == [False] and store.confidence_of([2]).tolist() == [0.0]
    store.replace_all(torch.arange(10) % 3)
    assert store.valid.all() and store[[4, 9]].tolist() == [1, 0]
    store.clear()
    assert not store.has_labels


def test_store_state_dict_round_trip():
    store = PseudoLabelStore(6, 4)
    store.update([0, 3, 5], [3, 1, 2], confidence=[0.9, 0.8, 0.7])
    fresh = PseudoLabelStore(6, 4)
    fresh.load_state_dict(store.state_dict())
    assert torch.equal(fresh.labels, store.labels) and torch.equal(fresh.confidence, store.confidence)
    assert fresh.mask([0, 1]).tolist() == [True, False]
    # as part of a method, the buffers travel in its checkpoint
    parent = nn.Module()
    parent.pseudo = store
    assert {"pseudo.labels", "pseudo.confidence"} <= set(parent.state_dict())


def test_store_errors():
    store = PseudoLabelStore(5, 3)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        store.update([1, 5], [0, 0])
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        store[torch.tensor([-1])]
    with pytest.raises(ValueError, match="2 pseudo labels for 3"):
        store.update([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="4 pseudo labels for 5"):
        store.replace_all([0, 1, 2, 0])
    with pytest.raises(ValueError, match="confidences"):
        store.update([0, 1], [0, 1], confidence=[0.5])
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        store.update([0], [3])
    with pytest.raises(ValueError, match="integers"):
        store.update(torch.tensor([0.0]), [1])
    for call in (lambda: store[None], lambda: store.mask(None), lambda: store.update(None, [0])):
        with pytest.raises(ValueError, match=r"must yield \(x, idx\)"):
            call()
    with pytest.raises(ValueError, match=r"must yield \(x, idx\)"):
        target_indices(torch.zeros(2, 3))
    x, idx = target_indices((torch.zeros(2, 3), torch.tensor([4, 1])))
    assert idx.tolist() == [4, 1]
    assert not store.has_labels  # failed updates wrote nothing
