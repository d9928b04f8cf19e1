"""SHOT (Liang et al., ICML 2020): whole-step replays of both phases, the pseudo-label refresh, the
options it refuses, and a few steps through the Hydra app.

The replays are written from the paper and the official digits code (tim-learn/SHOT
``digit/uda_digit.py``), not from the library: phase 1 is label-smoothed CE on the source rows with
SGD over G + B + C; phase 2 clusters the whole target train set in eval mode (numpy/scipy, as SHOT's
``obtain_label``), then steps a *new* SGD over G + B only on
``ent_par [mean H(p_i) - gent H(mean p)] + cls_par CE(z_t, y_hat[idx])``; each phase has its own
``lr_0 (1 + 10 i / T_phase)^-0.75``.
"""

import copy
import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import cdist

from conftest import QUICK, SHARED_DATA, make_cfg, needs_shared
from lightning_da.methods.shot import SHOT
from lightning_da.optim import progress_schedule
from step_replay import OneBatchData, TinyBackbone, assert_close_logs, assert_same_state, run_batches


LR, MOM, WD = 0.1, 0.9, 1e-3
MULT = {"backbone": 0.5, "classifier": 2.0}
HP = dict(smooth=0.2, ent_par=0.7, gent=0.6, cls_par=0.3)
EPS = 1e-5


def make_data(nan_source: bool = False, repeat: int = 1):
    g = torch.Generator().manual_seed(1)
    x_pool = torch.randn(10, 6, generator=g) * 1.5 + 0.5          # the target train set
    target_pass = [(x_pool[:5], torch.arange(5)), (x_pool[5:], torch.arange(5, 10))]
    perm = torch.tensor([7, 2, 9, 0, 4, 5, 1])                    # the training batch's samples
    xs = torch.full((5, 6), float("nan")) if nan_source else torch.randn(5, 6, generator=g)
    batch = {"source": (xs, torch.tensor([0, 1, 2, 1, 0])), "target": (x_pool[perm], perm)}
    return OneBatchData(batch, target_pass=target_pass, repeat=repeat), x_pool, batch


def make_model(source_epochs: int, **kw):
    torch.manual_seed(0)
    return SHOT(TinyBackbone(), 3, partial(torch.optim.SGD, lr=LR, momentum=MOM, weight_decay=WD, nesterov=True),
                scheduler=partial(progress_schedule, alpha=10.0, beta=0.75), source_epochs=source_epochs,
                bottleneck={"dim": 5, "batch_norm": True, "relu": False, "dropout": 0.0, "init": "xavier"},
                lr_mult=MULT, pseudo={"interval": None, "rounds": 2}, **{**HP, **kw})


def shot_sgd(groups):
    return torch.optim.SGD(groups, lr=LR, momentum=MOM, weight_decay=WD, nesterov=True)


def set_lr(opt, bases, i, total):
    for group, base in zip(opt.param_groups, bases):
        group["lr"] = base * (1 + 10.0 * i / total) ** -0.75


def replay_source_step(ref, opt, bases, i, total, batch):
    xs, ys = batch["source"]
    set_lr(opt, bases, i, total)
    ref.train()
    z = ref.classifier(ref.bottleneck(ref.backbone(xs)))
    q = F.one_hot(ys, 3).float() * (1 - HP["smooth"]) + HP["smooth"] / 3
    loss = -(q * torch.log_softmax(z, 1)).sum(1).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {"train/loss": loss, "train/loss_cls": loss, "train/source_acc": (z.argmax(1) == ys).float().mean()}


def shot_obtain_label(ref, x_pool):
    """SHOT's obtain_label in numpy/scipy: one soft and one hard round of cosine centroid clustering."""
    ref.eval()
    with torch.no_grad():
        fea = ref.bottleneck(ref.backbone(x_pool))
        out = torch.softmax(ref.classifier(fea), 1).double().numpy()
    ref.train()
    fea = torch.cat([fea, torch.ones(len(fea), 1)], 1).double()
    fea = (fea / fea.norm(dim=1, keepdim=True)).numpy()
    aff = out
    for _ in range(2):
        initc = aff.T @ fea / (1e-8 + aff.sum(0)[:, None])
        labels = cdist(fea, initc, "cosine").argmin(1)
        aff = np.eye(3)[labels]
    return torch.from_numpy(labels).long()


def replay_target_step(ref, opt, bases, i, total, batch, labels):
    xt, idx = batch["target"]
    set_lr(opt, bases, i, total)
    z = ref.classifier(ref.bottleneck(ref.backbone(xt)))
    p = torch.softmax(z, 1)
    ent = (-(p * torch.log(p + EPS)).sum(1)).mean()
    pm = p.mean(0)
    div = -(pm * torch.log(pm + EPS)).sum()
    ce = F.cross_entropy(z, labels[idx])
    loss = HP["ent_par"] * (ent - HP["gent"] * div) + HP["cls_par"] * ce
    opt.zero_grad()
    loss.backward()
    opt.step()
    return {"train/loss": loss, "train/loss_entropy": ent, "train/loss_diversity": div,
            "train/loss_im": ent - HP["gent"] * div, "train/loss_pseudo": ce}


def source_optimizer(ref):
    groups = [{"params": list(ref.backbone.parameters()), "lr": LR * 0.5},
              {"params": list(ref.bottleneck.parameters()), "lr": LR},
              {"params": list(ref.classifier.parameters()), "lr": LR * 2.0}]
    return shot_sgd(groups), [LR * 0.5, LR, LR * 2.0]


def target_optimizer(ref):  # a new optimiser over G + B only (fresh momentum), as SHOT's phase 2
    return shot_sgd([{"params": list(ref.backbone.parameters()), "lr": LR * 0.5},
                {"params": list(ref.bottleneck.parameters()), "lr": LR}]), [LR * 0.5, LR]


def test_source_phase_step_matches_replay():
    model = make_model(source_epochs=1)
    ref = copy.deepcopy(model)
    data, _, batch = make_data()
    logged, _ = run_batches(model, data=data)
    opt, bases = source_optimizer(ref)
    expected = replay_source_step(ref, opt, bases, 0, 1, batch)
    assert_close_logs(logged[-1], expected)
    assert "train/loss_im" not in logged[-1]
    assert_same_state(model, ref, ignore=("pseudo_labels",))


def test_target_phase_step_is_source_free_and_matches_replay():
    """source_epochs=0: the first batch already adapts. The source half is all NaN: were it read,
    something would be NaN."""
    model = make_model(source_epochs=0)
    ref = copy.deepcopy(model)
    classifier_before = copy.deepcopy(model.classifier.state_dict())
    data, x_pool, batch = make_data(nan_source=True)
    logged, _ = run_batches(model, data=data)
    labels = shot_obtain_label(ref, x_pool)
    assert len(set(labels[batch["target"][1]].tolist())) > 1  # the test can see a wrong pseudo-label lookup
    opt, bases = target_optimizer(ref)
    expected = replay_target_step(ref, opt, bases, 0, 1, batch, labels)
    assert_close_logs(logged[-1], expected)
    assert torch.equal(model.pseudo_labels.labels, labels)
    for k, v in model.state_dict().items():
        assert not (v.is_floating_point() and torch.isnan(v).any()), k
    assert_same_state(model, ref, ignore=("pseudo_labels",))
    for k, v in model.classifier.state_dict().items():
        assert torch.equal(v, classifier_before[k]), f"classifier.{k} changed in the target phase"
    assert not any(p.requires_grad for p in model.classifier.parameters())
    in_target_opt = {id(p) for g in model.trainer.optimizers[1].param_groups for p in g["params"]}
    assert not in_target_opt & {id(p) for p in model.classifier.parameters()}  # left out of the target optimiser


def test_two_phases_replay_restarted_schedule_fresh_momentum_frozen_classifier(monkeypatch):
    """2 epochs x 2 batches: one source epoch, then one target epoch (pseudo labels at its start);
    each phase's schedule runs over its own 2 steps; the target optimiser starts without momentum."""
    model = make_model(source_epochs=1)
    ref = copy.deepcopy(model)
    snapshots = []
    epoch_start = model.on_train_epoch_start
    monkeypatch.setattr(model, "on_train_epoch_start",
                        lambda: (snapshots.append(copy.deepcopy(model.classifier.state_dict())), epoch_start())[1])
    data, x_pool, batch = make_data(repeat=2)
    logged, _ = run_batches(model, data=data, max_epochs=2)
    opt, bases = source_optimizer(ref)
    exp = [replay_source_step(ref, opt, bases, i, 2, batch) for i in range(2)]
    labels = shot_obtain_label(ref, x_pool)
    opt, bases = target_optimizer(ref)
    exp += [replay_target_step(ref, opt, bases, i, 2, batch, labels) for i in range(2)]
    assert len(logged) == 4
    for got, want in zip(logged, exp):
        assert_close_logs(got, want)
    assert_same_state(model, ref, ignore=("pseudo_labels",))
    assert torch.equal(model.pseudo_labels.labels, labels)
    for k, v in model.classifier.state_dict().items():  # bit for bit as at the end of the source phase
        assert torch.equal(v, snapshots[1][k]), f"classifier.{k} changed in the target phase"
    assert not torch.equal(snapshots[1]["weight_v"], snapshots[0]["weight_v"])  # it did train in the source phase


def test_pseudo_label_refresh_in_eval_mode_and_interval(monkeypatch):
    model = make_model(source_epochs=0)
    data, x_pool, _ = make_data()
    run_batches(model, data=data)
    with torch.no_grad():  # move the model so that the refresh has something new to find
        model.bottleneck[0].weight.mul_(-1.5)
    bn_before = copy.deepcopy(model.backbone[1].state_dict())
    model.train()
    model.refresh_pseudo_labels()
    assert model.training  # back in training mode
    for k, v in model.backbone[1].state_dict().items():  # eval mode: no running statistics updated
        assert torch.equal(v, bn_before[k]), k
    assert torch.equal(model.pseudo_labels.labels, shot_obtain_label(copy.deepcopy(model), x_pool))

    def count(interval, cls_par=HP["cls_par"], repeat=3, source_epochs=0, max_epochs=1):
        m = make_model(source_epochs=source_epochs, cls_par=cls_par)
        m.pseudo_cfg["interval"] = interval
        calls = []
        original = m.refresh_pseudo_labels
        monkeypatch.setattr(m, "refresh_pseudo_labels", lambda: (calls.append(m.current_epoch), original())[1])
        run_batches(m, data=make_data(repeat=repeat)[0], max_epochs=max_epochs)
        return len(calls), m, calls

    assert count(None)[0] == 1            # at the start of the target epoch only
    assert count(None, repeat=1, source_epochs=1, max_epochs=3)[2] == [1, 2]  # every target epoch, none in the source one
    assert count(1)[0] == 3               # and before every later batch
    assert count("target_pass")[0] == 2   # ceil(10 samples / 7 per batch) = every 2 batches: batches 0 and 2
    n, m, _ = count(None, cls_par=0.0)    # SHOT-IM: no pseudo labels at all
    assert n == 0 and m.pseudo_labels is None


@pytest.mark.parametrize("option,value", [("trade_off", 0.5), ("classifier_init", "xavier"), ("extra_losses", {"entropy": 0.1}),
                                          ("head", {"hidden": [4]})])
def test_unused_options_refused(option, value):
    with pytest.raises(ValueError, match=rf"SHOT does not use the option\(s\) \['{option}'\]"):
        SHOT(TinyBackbone(), 3, partial(torch.optim.SGD, lr=0.1), source_epochs=1, **{option: value})


def test_bad_pseudo_options_refused():
    with pytest.raises(ValueError, match="interval"):
        SHOT(TinyBackbone(), 3, partial(torch.optim.SGD, lr=0.1), source_epochs=1, pseudo={"interval": "epoch"})
    with pytest.raises(ValueError, match="unknown pseudo"):
        SHOT(TinyBackbone(), 3, partial(torch.optim.SGD, lr=0.1), source_epochs=1, pseudo={"start_epoch": 1})


@needs_shared(SHARED_DATA / "MNIST")
def test_digits_shot_through_the_app(tmp_path):
    from lightning_da.train import train

    quick = [o for o in QUICK if not o.startswith("callbacks.")] + ["callbacks=none"]  # validators, visuals: +25 s
    res = train(make_cfg(tmp_path, quick + ["experiment=digits/shot", f"paths.data_dir={SHARED_DATA}",
                                            "trainer.max_epochs=2", "method.source_epochs=1", "logger=csv"]))
    assert res["steps"] == 2 * 4
    assert math.isfinite(res["last"]["test/target_acc"])
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss_cls" in header and "train/loss_pseudo" in header and "train/loss_im" in header


def test_domain_aware_norm_refused():
    """Each phase forwards one domain: there is no split to give DSBN / TransNorm / RN."""
    from lightning_da.norm import DomainSplitError, convert_norm

    with pytest.raises(DomainSplitError, match="SHOT cannot split"):
        SHOT(TinyBackbone(), 3, partial(torch.optim.SGD, lr=0.1), source_epochs=1,
             norm=partial(convert_norm, kind="dsbn"))
