"""CGDM: the whole-step test: one batch through Lightning (all optimiser steps of that batch: A, B, then C
``num_k`` times) against the plain-torch replay of :mod:`step_replay.bi_classifier` on deep copies of
the modules taken before the step (float64, with G and the heads optimised differently). CGDM's pseudo labels are active from epoch 0: the test clusters the whole target
train set itself (SHOT's weighted-centroid clustering, eval mode) before the replay adds the weighted
CE and the second-order gradient discrepancy. Then: the pseudo-label terms enter the right steps,
L_GD reaches only G in step C, the bottleneck quirk, and training through run.py with pseudo-label
refreshes.
"""

import copy
from functools import partial

import pytest
import torch

from conftest import QUICK, changed, make_cfg, snapshot
from lightning_da.methods import CGDM
from lightning_da.models import build_backbone
from lightning_da.pseudo_labels import PseudoLabelStore
from lightning_da.train import train
from step_replay import OneBatchData, TinyBackbone, assert_same_state, changed_any, run_one_batch
from step_replay.bi_classifier import (ATOL, EXTRA, NUM_CLASSES, RTOL, check_logs, check_lrs_after_one_batch,
                                       common_kwargs, excess, replay, subset_batch, target_pass)


# ---------------------------------------------------------------------------------------------- whole step
def shot_pseudo_labels(ref, passes, n_target, rounds):
    """SHOT/CGDM obtain_label, written out: eval mode, G features and softmax(F1 + F2) of the whole
    target set; [f; 1] L2-normalised; soft centroids, argmin cosine distance; then rounds - 1 hard
    rounds. Returns the label of every target sample by index (float64 as the original's numpy)."""
    ref.eval()
    feats, probs, idxs = [], [], []
    with torch.no_grad():
        for x, idx in passes:
            f = ref.bottleneck(ref.backbone(x))
            feats.append(f)
            probs.append((ref.classifier(f) + ref.classifier2(f)).softmax(1))
            idxs.append(idx)
    ref.train()
    f = torch.cat(feats).double()
    f = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], 1)
    f = f / f.norm(dim=1, keepdim=True)
    weights = torch.cat(probs).double()
    labels = None
    for _ in range(rounds):
        if labels is not None:
            weights = torch.eye(NUM_CLASSES, dtype=f.dtype)[labels]
        mass = weights.sum(0)
        centroids = weights.T @ f / (mass[:, None] + 1e-8)
        dist = 1 - (f @ centroids.T) / (f.norm(dim=1)[:, None] * centroids.norm(dim=1)[None, :])
        dist = dist.masked_fill(mass[None, :] <= 0, float("inf"))  # a class without members gets no sample
        labels = dist.argmin(1)
    out = torch.full((n_target,), -1, dtype=torch.long)
    out[torch.cat(idxs)] = labels
    return out


CGDM_WEIGHTS = {"w_ent_a": 0.03, "w_ent_b": 0.05, "w_ent_c": 0.07, "w_pseudo": 0.2, "w_gd": 0.3}
CGDM_CASES = {
    "im-joint": dict(entropy_mode="im", train_bottleneck=True, domain_forward="joint", wce_batch_factor=True,
                     wce_detach_weights=False, extra=EXTRA, num_k=2, rounds=3),
    "conditional-frozen-bottleneck": dict(entropy_mode="conditional", train_bottleneck=False, domain_forward="joint",
                                          wce_batch_factor=False, wce_detach_weights=False, extra={}, num_k=3,
                                          rounds=2),
    "im-separate-detached": dict(entropy_mode="im", train_bottleneck=False, domain_forward="separate",
                                 wce_batch_factor=True, wce_detach_weights=True, extra=EXTRA, num_k=2, rounds=1),
}


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("case", list(CGDM_CASES))
def test_cgdm_step_matches_replay(case):
    c = CGDM_CASES[case]
    torch.manual_seed(24)  # initial weights under which the target set needs exactly `rounds` clustering rounds
    w_dis = 0.8
    model = CGDM(TinyBackbone(), NUM_CLASSES, num_k=c["num_k"], w_dis=w_dis, domain_forward=c["domain_forward"],
                 entropy_mode=c["entropy_mode"], train_bottleneck=c["train_bottleneck"],
                 wce_batch_factor=c["wce_batch_factor"], wce_detach_weights=c["wce_detach_weights"],
                 pseudo={"start_epoch": 0, "rounds": c["rounds"], "batch_size": 4, "eval_transform": True},
                 **CGDM_WEIGHTS, **common_kwargs(c["train_bottleneck"], extra_losses=c["extra"] or None)).double()
    ref = copy.deepcopy(model)
    before = copy.deepcopy(model)
    b, passes = subset_batch(), target_pass()
    logged = run_one_batch(model, data=OneBatchData(b, target_pass=passes))

    # pseudo labels of the whole target set, clustered in eval mode before the step
    labels = shot_pseudo_labels(ref, passes, 10, c["rounds"])
    assert torch.equal(model.pseudo_labels.labels, labels)
    for rounds in {1, 2, 3} - {c["rounds"]}:  # this target set needs 3 rounds to converge: `rounds` shows
        assert not torch.equal(shot_pseudo_labels(copy.deepcopy(before), passes, 10, rounds), labels), rounds
    assert torch.equal(model.pseudo_labels.confidence, torch.ones(10))
    y_hat = labels[b["target"][1]]
    assert len(y_hat.unique()) > 1  # the batch's pseudo labels are not all one class

    cgdm = {**CGDM_WEIGHTS, **{k: c[k] for k in ("entropy_mode", "train_bottleneck", "wce_batch_factor",
                                                   "wce_detach_weights")}}
    args = dict(domain_forward=c["domain_forward"], num_k=c["num_k"], w_dis=w_dis, extra=c["extra"], pseudo=labels)
    expected = replay(ref, b, cgdm=cgdm, **args)
    check_logs(logged, expected)
    assert_same_state(model, ref, rtol=RTOL, atol=ATOL)
    check_lrs_after_one_batch(model, c["train_bottleneck"])
    for prefix in ("backbone", "classifier", "classifier2"):
        assert changed_any(model, before, prefix), prefix
    assert changed_any(model, before, "bottleneck") == c["train_bottleneck"]

    # each CGDM term visibly matters: the state is far outside the tolerance of a replay without it
    for weight in ("w_gd", "w_pseudo", "w_ent_a", "w_ent_b", "w_ent_c"):
        other = copy.deepcopy(before)
        replay(other, b, cgdm={**cgdm, weight: 0.0}, **args)
        assert excess(model, other) > 10, weight


# ---------------------------------------------------------------------------------------------- the steps
def make_cgdm(**kw):
    torch.manual_seed(0)
    model = CGDM(build_backbone("lenet"), 10, optimizer=partial(torch.optim.SGD, lr=0.1, momentum=0.9),
                 generator_optimizer=partial(torch.optim.SGD, lr=0.1), bottleneck={"dim": 64},
                 head={"hidden": [32], "dropout": 0.0}, num_k=1, pseudo={"start_epoch": 0}, **kw)
    model.manual_backward = lambda loss: loss.backward()
    model.pseudo_labels = PseudoLabelStore(8, 10)
    model.pseudo_labels.replace_all(torch.arange(8) % 10)
    model._pseudo_ready = True
    model.configure_optimizers()  # the named groups G and F that the steps update
    batch = {"source": (torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))),
             "target": (torch.randn(8, 1, 28, 28), torch.arange(8))}
    return model, batch


def test_step_terms_by_step():
    model, batch = make_cgdm()
    f, z1, z2 = model.forward_heads(batch["source"][0], batch["target"][0])
    assert set(model.step_terms("A", f, z1, z2, 8, batch)[1]) == {"train/loss_entropy", "train/loss_pseudo"}
    assert set(model.step_terms("B", f, z1, z2, 8, batch)[1]) == {"train/loss_entropy"}
    assert set(model.step_terms("C", f, z1, z2, 8, batch)[1]) == {"train/loss_entropy", "train/loss_gd"}
    model._pseudo_ready = False  # before pseudo labels exist: entropy only
    assert set(model.step_terms("A", f, z1, z2, 8, batch)[1]) == {"train/loss_entropy"}


@pytest.mark.parametrize("step,expected", [("a", {"backbone", "bottleneck", "classifier", "classifier2"}),
                                           ("b", {"classifier", "classifier2"}), ("c", {"backbone", "bottleneck"})])
@pytest.mark.parametrize("domain_forward", ["joint", "separate"])
def test_each_step_updates_exactly_its_parameters(step, expected, domain_forward):
    model, batch = make_cgdm(domain_forward=domain_forward)
    before = snapshot(model)
    {"a": lambda: model.step_a(batch), "b": lambda: model.step_b(batch),
     "c": lambda: model.step_c(batch)}[step]()
    assert changed(model, before) == expected


def test_gradient_discrepancy_alone_moves_only_the_generator():
    model, batch = make_cgdm(w_ent_c=0.0)
    model.w_dis = 0.0  # step C with L_GD only
    before = snapshot(model)
    model.step_c(batch)
    assert changed(model, before) == {"backbone", "bottleneck"}


def test_untrained_bottleneck_quirk():
    model, batch = make_cgdm(train_bottleneck=False)
    before = snapshot(model)
    model.step_a(batch)
    assert changed(model, before) == {"backbone", "classifier", "classifier2"}


def test_target_without_indices_is_refused():
    model, batch = make_cgdm()
    batch["target"] = batch["target"][0]
    with pytest.raises(ValueError, match=r"\(x, idx\)"):
        model.step_a(batch)


@pytest.mark.slow
def test_cgdm_trains_and_refreshes_pseudo_labels(tmp_path):
    res = train(make_cfg(tmp_path, ["method=cgdm", "method.bottleneck.dim=64", "method.head.hidden=[32]", "method.num_k=1",
                                    "method.pseudo.start_epoch=0", "method.pseudo.interval=2", *QUICK,
                                    "trainer.max_epochs=2", "logger=csv"]))
    assert res["steps"] == 2 * 4 * 4  # optimiser steps: A steps G and the heads, B the heads, C G (num_k=1)
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss_gd" in header and "train/loss_pseudo" in header


@pytest.mark.parametrize("experiment", ["digits/cgdm", "digits/mcd"])
def test_digits_experiments_build_the_cgdm_digits_classifiers(tmp_path, experiment):
    """The CGDM digits script's classifiers (LeNetClassifier, shared by its MCD): Dropout-100-BN-ReLU twice,
    Dropout, 10 outputs, xavier-normal Linear weights with zero biases; the two heads differ."""
    from lightning_da.train import build

    _, model, _ = build(make_cfg(tmp_path, [f"experiment={experiment}", "data=digits_bundled", *QUICK]))
    for head in (model.classifier, model.classifier2):
        linears = [m for m in head if isinstance(m, torch.nn.Linear)]
        assert [(m.in_features, m.out_features) for m in linears] == [(1200, 100), (100, 100), (100, 10)]
        assert all(torch.count_nonzero(m.bias) == 0 for m in linears)
        assert sum(isinstance(m, torch.nn.Dropout) for m in head) == 3
    assert not torch.equal(model.classifier[1].weight, model.classifier2[1].weight)
