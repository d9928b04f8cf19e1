"""Every ``experiment=digits_tllib/<m>`` composes to TLlib's digits script for its method: network
layers and shapes, initialisation, optimiser groups (lr, momentum, nesterov, weight decay), schedule,
trade-offs, GRL constants, pre-training phases, batch and length. The table below holds the values
read from TLlib (examples/domain_adaptation/image_classification/<m>.py and <m>.sh, tllib/*), so a
config change cannot drift from them silently; a few experiments also train a few steps."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import QUICK, make_cfg
from lightning_da.data.views import TimmRandAugment
from lightning_da.train import build, train

# TLlib's LeNet (tllib/vision/models/digits.py), --no-pool: the trunk of every experiment
LENET = [("Conv2d", 1, 20, 5), "MaxPool2d", "ReLU", ("Conv2d", 20, 50, 5), ("Dropout2d", 0.5), "MaxPool2d", "ReLU",
         "Flatten", ("Linear", 800, 500), "ReLU", ("Dropout", 0.5)]
BN_256 = [("Linear", 500, 256), ("BatchNorm1d", 256), "ReLU"]        # dann/mcc/bsp/adda ImageClassifier bottleneck
DISC_1024 = [("Linear", 256, 1024), ("BatchNorm1d", 1024), "ReLU", ("Linear", 1024, 1024), ("BatchNorm1d", 1024),
             "ReLU", ("Linear", 1024, 1)]                              # DomainDiscriminator(256, hidden_size=1024)


def inv(gamma):
    return ("inv", gamma, 0.75)


# per experiment: modules (layers), optimiser groups {name: (lr, momentum, nesterov, weight decay)} per
# optimiser, schedule, epochs, method attributes, GRL (alpha, max_iters, lo, hi, auto_step)
TLLIB = {
    "digits_tllib/source_only": dict(   # erm.py / erm.sh: Classifier without bottleneck, lr-gamma 3e-4, wd 5e-4
        modules={"bottleneck": [], "classifier": [("Linear", 500, 10)]},
        groups=[{"backbone": (0.01, 0.9, True, 5e-4), "classifier": (0.01, 0.9, True, 5e-4)}],
        schedule=inv(3e-4), epochs=20, attrs={"hparams.forward_target": False}),
    "digits_tllib/dan": dict(           # dan.py / dan.sh / tllib.alignment.dan
        modules={"bottleneck": [("Linear", 500, 256), "ReLU", ("Dropout", 0.5)], "classifier": [("Linear", 256, 10)]},
        groups=[{n: (0.01, 0.9, True, 5e-4) for n in ("backbone", "bottleneck", "classifier")}],
        schedule=inv(3e-4), epochs=20,
        attrs={"trade_off": 1.0, "alphas": (0.125, 0.25, 0.5, 1.0, 2.0), "estimator": "linear", "offset": True}),
    "digits_tllib/jan": dict(           # jan.py / jan.sh / tllib.alignment.jan
        modules={"bottleneck": [("Linear", 500, 256), ("BatchNorm1d", 256), "ReLU", ("Dropout", 0.5)],
                 "classifier": [("Linear", 256, 10)]},
        groups=[{n: (0.01, 0.9, True, 5e-4) for n in ("backbone", "bottleneck", "classifier")}],
        schedule=inv(3e-4), epochs=20,
        attrs={"trade_off": 1.0, "kernels": ({"alphas": (0.125, 0.25, 0.5, 1.0, 2.0)}, {"sigma": 0.92}),
               "estimator": "unbiased", "offset": True, "thetas": None}),
    "digits_tllib/mcc": dict(           # mcc.py / mcc.sh / tllib.self_training.mcc
        modules={"bottleneck": BN_256, "classifier": [("Linear", 256, 10)]},
        groups=[{n: (0.01, 0.9, True, 1e-3) for n in ("backbone", "bottleneck", "classifier")}],
        schedule=inv(1e-3), epochs=20, attrs={"trade_off": 1.0, "temperature": 2.5}),
    "digits_tllib/mdd": dict(           # mdd.py / mdd.sh / tllib.alignment.mdd: backbone 0.1x even from scratch
        modules={"bottleneck": [("Linear", 500, 1024), ("BatchNorm1d", 1024), "ReLU", ("Dropout", 0.5)],
                 "classifier": [("Linear", 1024, 1024), "ReLU", ("Dropout", 0.5), ("Linear", 1024, 10)],
                 "adv_head": [("Linear", 1024, 1024), "ReLU", ("Dropout", 0.5), ("Linear", 1024, 10)]},
        groups=[{"backbone": (0.001, 0.9, True, 5e-4), **{n: (0.01, 0.9, True, 5e-4)
                                                          for n in ("bottleneck", "classifier", "adv_head")}}],
        schedule=inv(2e-4), epochs=20, attrs={"trade_off": 1.0, "margin": 4.0}, grl=(1.0, 1000, 0.0, 0.1, False),
        init={"bottleneck.0.weight": (0.0, 0.005), "classifier.0.0.weight": (0.0, 0.01),
              "classifier.1.weight": (0.0, 0.01), "adv_head.0.0.weight": (0.0, 0.01)},
        const={"bottleneck.0.bias": 0.1, "classifier.0.0.bias": 0.0, "classifier.1.bias": 0.0}),
    "digits_tllib/afn": dict(           # afn.py / afn.sh / tllib.alignment.afn: momentum off the backbone, constant lr
        modules={"bottleneck": [("Linear", 500, 1000), ("BatchNorm1d", 1000), "ReLU", ("Dropout", 0.5)],
                 "classifier": [("Linear", 1000, 10)]},
        groups=[{"backbone": (0.01, 0.0, False, 5e-4), "bottleneck": (0.01, 0.9, False, 5e-4),
                 "classifier": (0.01, 0.9, False, 5e-4)}],
        schedule=inv(0.0), epochs=20,
        attrs={"trade_off": 0.05, "variant": "safn", "delta": 0.3, "dropout_scale": math.sqrt(0.5),
               "domain_forward": "separate", "extra.weights": {"entropy": 0.03}},
        init={"bottleneck.0.weight": (0.0, 0.01), "bottleneck.0.bias": (0.0, 0.01), "bottleneck.1.weight": (1.0, 0.01),
              "classifier.weight": (0.0, 0.01), "classifier.bias": (0.0, 0.01)},
        const={"bottleneck.1.bias": 0.0}),
    "digits_tllib/bsp": dict(           # bsp.py / bsp.sh / tllib.alignment.bsp, dann: BSP on DANN after 3 source epochs
        modules={"bottleneck": BN_256, "classifier": [("Linear", 256, 10)], "discriminator": DISC_1024},
        groups=[{n: (0.01, 0.9, True, 1e-3) for n in ("backbone", "bottleneck", "classifier", "discriminator")}],
        schedule=inv(1e-3), epochs=23, pretrain=(3, 0.001), grl=(1.0, 1000, 0.0, 1.0, True),
        attrs={"adversary": "dann", "trade_off": 1.0, "bsp_weight": 1e-4, "bsp_k": 1, "entropy_conditioning": False}),
    "digits_tllib/adda": dict(          # adda.py / adda.sh / tllib.alignment.adda: pre-training, then E_t + D only
        modules={"bottleneck": BN_256, "classifier": [("Linear", 256, 10)], "discriminator": DISC_1024},
        groups=[{n: (0.001, 0.9, True, 1e-3) for n in ("backbone", "bottleneck", "classifier")},
                {n: (0.01, 0.9, True, 1e-3) for n in ("backbone", "bottleneck")},
                {"discriminator": (0.01, 0.9, True, 1e-3)}],
        schedule=inv(3e-4), epochs=23, pretrain=(3, 0.001), grl=(1.0, 1000, 0.0, 2.0, True),
        attrs={"hparams.objective": "grl", "hparams.source_dropout": True}),
    "digits_tllib/cc_loss": dict(       # cc_loss.py / cc_loss.sh / tllib.self_training.cc_loss, mcc
        modules={"bottleneck": BN_256, "classifier": [("Linear", 256, 10)]},
        groups=[{n: (0.01, 0.9, True, 1e-3) for n in ("backbone", "bottleneck", "classifier")}],
        schedule=inv(1e-3), epochs=20,
        attrs={"hparams.temperature": 2.5, "hparams.threshold": 0.95, "hparams.mcc_weight": 1.0,
               "hparams.consistency_weight": 1.0}),
    "digits_tllib/mcd": dict(           # mcd.py / mcd.sh / tllib.alignment.mcd: G without momentum, constant lr
        modules={"bottleneck": [],
                 **{h: [("Dropout", 0.5), ("Linear", 500, 1024), ("BatchNorm1d", 1024), "ReLU", ("Dropout", 0.5),
                        ("Linear", 1024, 1024), ("BatchNorm1d", 1024), "ReLU", ("Linear", 1024, 10)]
                    for h in ("classifier", "classifier2")}},
        groups=[{"backbone": (0.01, 0.0, False, 5e-4)},
                {"classifier": (0.01, 0.9, False, 5e-4), "classifier2": (0.01, 0.9, False, 5e-4)}],
        schedule="constant", epochs=20,
        attrs={"num_k": 4, "w_dis": 0.3, "domain_forward": "joint", "extra.weights": {"class_balance": 0.03}}),
}


def layers(module: nn.Module) -> list:
    """The leaf layers of ``module`` in order, as (type, shape...) or type names."""
    out = []
    for m in module.modules():
        if list(m.children()) or isinstance(m, nn.Sequential):  # containers (an empty one: no bottleneck)
            continue
        if isinstance(m, nn.Linear):   # the library's Classifier is an nn.Linear
            out.append(("Linear", m.in_features, m.out_features))
        elif isinstance(m, nn.Conv2d):
            out.append(("Conv2d", m.in_channels, m.out_channels, m.kernel_size[0]))
        elif isinstance(m, nn.BatchNorm1d):
            out.append(("BatchNorm1d", m.num_features))
        elif isinstance(m, (nn.Dropout, nn.Dropout2d)):
            out.append((type(m).__name__, m.p))
        else:
            out.append(type(m).__name__)
    return out


def attr(obj, dotted: str):
    for part in dotted.split("."):
        obj = obj[part] if isinstance(obj, dict) else getattr(obj, part)
    return obj


def optimizers(model) -> list:
    """The configured optimisers and schedulers (a stand-in trainer gives the run's length)."""
    model._trainer = SimpleNamespace(estimated_stepping_batches=2500 * 23, max_epochs=23)
    conf = model.configure_optimizers()
    model._trainer = None
    if isinstance(conf, dict):
        return [conf["optimizer"]], [conf["lr_scheduler"]["scheduler"]]
    if isinstance(conf, tuple):
        return conf
    return (conf if isinstance(conf, list) else [conf]), []


@pytest.mark.parametrize("name", sorted(TLLIB))
def test_tllib_experiment_composes_tllibs_settings(tmp_path, name):
    want = TLLIB[name]
    cfg = make_cfg(tmp_path, [f"experiment={name}", "data=digits_bundled"])
    # TLlib's protocol: batch 128 per domain, 2,500 iterations per epoch, 20 epochs (+ 3 pre-training)
    assert (cfg.data.batch_size, cfg.data.iters_per_epoch, cfg.trainer.max_epochs) == (128, 2500, want["epochs"])
    assert cfg.data.domain_args.resize == "pil_bicubic" and cfg.data.domain_args.image_size == 28
    assert cfg.backbone.name == "lenet_tllib" and cfg.method.channels_last
    torch.manual_seed(0)
    _, model, _ = build(cfg)
    assert layers(model.backbone) == LENET
    for module, expected in want["modules"].items():
        assert layers(getattr(model, module)) == expected, module
    for key, value in want["attrs"].items():
        got = attr(model, key)
        assert got == (pytest.approx(value) if isinstance(value, float) else value), key
    params = dict(model.named_parameters())
    for key, (mean, std) in want.get("init", {}).items():
        assert params[key].mean().item() == pytest.approx(mean, abs=3 * std)
        assert params[key].std().item() == pytest.approx(std, rel=0.2), key
    for key, value in want.get("const", {}).items():
        assert torch.all(params[key] == value), key
    if "grl" in want:
        g = model.grl
        assert (g.alpha, g.max_iters, g.lo, g.hi, g.auto_step) == want["grl"]
    if "pretrain" in want:
        assert (model.hparams.pretrain_epochs, model.hparams.pretrain_lr) == want["pretrain"]

    opts, schedulers = optimizers(model)
    # each group's configured lr (a schedule may scale its step-0 lr, e.g. BSP's pre-training)
    got = [{g["name"]: (g.get("initial_lr", g["lr"]), g["momentum"], g["nesterov"], g["weight_decay"])
            for g in o.param_groups} for o in opts]
    for o_got, o_want in zip(got, want["groups"]):
        assert o_got == {k: pytest.approx(v) for k, v in o_want.items()}
    assert len(got) == len(want["groups"])
    if want["schedule"] == "constant":
        assert schedulers == [] or cfg.scheduler._target_.endswith("constant_schedule")
    else:
        _, gamma, power = want["schedule"]
        assert (cfg.scheduler.gamma, cfg.scheduler.power) == (gamma, power)
        assert cfg.scheduler._target_.endswith("inv_schedule")
    if name == "digits_tllib/bsp":   # the pre-training phase: lr 0.001 under inv from 0, then 0.01 from 0 again
        f = schedulers[0].lr_lambdas[0]
        assert 0.01 * f(0) == pytest.approx(0.001) and 0.01 * f(3 * 2500) == pytest.approx(0.01)
        assert 0.01 * f(3 * 2500 + 1000) == pytest.approx(0.01 * (1 + 1e-3 * 1000) ** -0.75)
    if name == "digits_tllib/cc_loss":
        assert cfg.data.domain_args.strong_view.policy == "rand-m10-n2-mstd2"


def test_tllib_strong_view_is_timms_randaugment(tmp_path):
    """CC-loss's strong target view: timm's rand-m10-n2-mstd2 on the 28-px digit (TLlib's get_train_transform)."""
    cfg = make_cfg(tmp_path, ["experiment=digits_tllib/cc_loss", "data=digits_bundled"])
    dm, _, _ = build(cfg)
    dm.setup("fit")
    random.seed(0)  # timm's ops draw from Python's random; each applies with probability 0.5, so look at 8 samples
    pairs = [dm.target_train[i][0] for i in range(8)]
    assert all(weak.shape == strong.shape == (1, 28, 28) for weak, strong in pairs)
    assert any(not torch.equal(weak, strong) for weak, strong in pairs)
    aug = TimmRandAugment("rand-m10-n2-mstd2", 28, (0.5,))
    ops = [op.name for op in aug.transform.ops]
    assert len(ops) == 15 and {"Invert", "SolarizeAdd", "TranslateXRel"} <= set(ops)
    assert all(op.magnitude == 10 and op.magnitude_std == 2 and op.prob == 0.5 for op in aug.transform.ops)
    assert aug.transform.num_layers == 2 and aug.transform.ops[0].hparams["img_mean"] == (128,)


@pytest.mark.parametrize("name,extra", [
    ("digits_tllib/bsp", ["method.pretrain_epochs=1", "trainer.max_epochs=2"]),   # across the pre-training phase
    ("digits_tllib/cc_loss", []),
    ("digits_tllib/afn", []),
])
def test_tllib_experiment_trains(tmp_path, name, extra):
    quick = [q for q in QUICK if not q.startswith("trainer.max_epochs")]
    cfg = make_cfg(tmp_path, [f"experiment={name}", "data=digits_bundled", *quick, "trainer.max_epochs=1", *extra])
    res = train(cfg)
    assert res["steps"] == 4 * cfg.trainer.max_epochs and 0.0 <= res["last"]["test/target_acc"] <= 1.0
