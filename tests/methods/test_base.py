"""The method contract (methods/base.py): no option accepted and silently ignored (a method refuses, by
name, the base options it has no use for, and no method config carries an option its method does not
take or refuses), option values are checked, and method construction (the norm scope, the
domain-split refusal, the multi-source refusal)."""

import inspect
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from hydra.utils import get_class

from conftest import CONF, QUICK, make_cfg
from lightning_da import methods
from lightning_da.methods import DANN, SourceOnly
from lightning_da.methods.base import DAMethod
from lightning_da.methods.coral import DeepCORAL
from lightning_da.methods.dan import DAN
from lightning_da.methods.mcc import MCC
from lightning_da.models import build_backbone
from lightning_da.norm import DomainAwareNorm, DomainSplitError
from lightning_da.train import build, train
from step_replay.one_loss import make


SGD = partial(torch.optim.SGD, lr=0.01)
VALUES = {"trade_off": 0.5, "classifier_init": "xavier", "bottleneck": {"dim": 16}, "lr_mult": {"backbone": 0.1},
          "extra_losses": {"entropy": 0.1}, "channels_last": True, "compile": True,
          "group_options": {"backbone": {"momentum": 0.0}}}


def accepted(cls) -> set[str]:
    """Keyword arguments a method class takes: its own, and its bases' while it passes **kwargs on."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters
        names |= {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self"}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()) or klass is DAMethod:
            break
    return names


METHOD_CONFIGS = sorted((CONF / "method").glob("*.yaml"))


@pytest.mark.parametrize("path", METHOD_CONFIGS, ids=lambda p: p.stem)
def test_method_config_carries_only_used_options(path: Path):
    cfg = yaml.safe_load(path.read_text())
    cls = get_class(cfg.pop("_target_"))
    unknown = sorted(set(cfg) - accepted(cls))
    assert not unknown, f"{path.name} sets {unknown}, which {cls.__name__} does not take"
    refused = sorted(set(cfg) & set(cls.unused_options))
    assert not refused, f"{path.name} sets {refused}, which {cls.__name__} refuses as unused"


REFUSALS = [(cls, opt) for cls in (methods.SourceOnly, methods.MCD, methods.CGDM, methods.CMKD, methods.ZeroShotCLIP)
            for opt in cls.unused_options]


@pytest.mark.parametrize("cls,option", REFUSALS, ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_unused_option_is_refused_by_name(cls, option):
    extra = {"class_names": ["a", "b"]} if cls in (methods.CMKD, methods.ZeroShotCLIP) else {}
    with pytest.raises(ValueError, match=rf"{cls.__name__} does not use the option\(s\) \['{option}'\].*method\.{option}"):
        cls(build_backbone("lenet"), 2, SGD, **{option: VALUES[option]}, **extra)


def test_every_method_declares_what_it_ignores():
    """The methods whose steps ignore an option declare it or do not take it (the list the issue found)."""
    assert {"trade_off"} <= set(methods.SourceOnly.unused_options)
    for cls in (methods.MCD, methods.CGDM, methods.CMKD, methods.M2CAN, methods.ZeroShotCLIP):
        assert not {"trade_off", "classifier_init"} & accepted(cls), cls.__name__  # one-loss options only
    assert {"lr_mult", "bottleneck"} <= set(methods.M2CAN.unused_options)
    assert {"extra_losses", "lr_mult"} <= set(methods.ZeroShotCLIP.unused_options)
    for cls in (methods.DANN, methods.CDAN, methods.FixMatch):
        assert not cls.unused_options, cls.__name__


@pytest.mark.parametrize("cls", [methods.MCD, methods.CGDM, methods.CMKD, methods.ZeroShotCLIP],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("option", ["trade_off", "classifier_init", "no_such_option"])
def test_an_option_a_method_does_not_take_is_refused_by_name(cls, option):
    extra = {"class_names": ["a", "b"]} if cls in (methods.CMKD, methods.ZeroShotCLIP) else {}
    with pytest.raises(ValueError, match=rf"{cls.__name__} does not use the option\(s\) \['{option}'\].*method\.{option}"):
        cls(build_backbone("lenet"), 2, SGD, **{option: 0.5}, **extra)


@pytest.mark.parametrize("option", methods.M2CAN.unused_options)
def test_m2can_refuses_unused_options(option):
    """M2CAN takes its learning rates from ``lr`` and weighs each term by its own ``w_*``."""
    from lightning_da.models.multimodal import TwoBranchNet

    net = TwoBranchNet(dict(kind="mlp", input="bow", in_features=8, hidden=[4]),
                       dict(kind="mlp", input="image", in_features=8, hidden=[4]))
    with pytest.raises(ValueError, match=rf"M2CAN does not use the option\(s\) \['{option}'\].*method\.{option}"):
        methods.M2CAN(net, 2, partial(torch.optim.Adam, lr=1e-3), **{option: VALUES[option]})


def test_mcd_refuses_trade_off_through_run_py(tmp_path):
    cfg = make_cfg(tmp_path, ["experiment=digits/mcd", "data=digits_bundled", "+method.trade_off=0.3", *QUICK])
    with pytest.raises(Exception, match=r"MCD does not use the option\(s\) \['trade_off'\].*method\.trade_off"):
        build(cfg)


def test_unused_options_stay_out_of_the_hyperparameters():
    """A checkpoint's hyper-parameters must not carry a refused option (load_from_checkpoint would pass it)."""
    model = methods.MCD(build_backbone("lenet"), 2, SGD, head={"hidden": [4], "dropout": 0.0})
    assert not {"trade_off", "classifier_init"} & set(model.hparams)
    assert model.hparams.channels_last is False  # switches stay: setup reads them
    with pytest.raises(ValueError, match="trade_off"):  # the default value given explicitly is still refused
        methods.MCD(build_backbone("lenet"), 2, SGD, trade_off=1.0)


def test_option_values_are_checked():
    with pytest.raises(ValueError, match="estimator"):
        make(DAN, estimator="quadratic")
    with pytest.raises(ValueError, match="layer"):
        make(DeepCORAL, layer="fc7")
    with pytest.raises(ValueError, match="temperature"):
        make(MCC, temperature=0.0)


# ---------------------------------------------------------------------------------------------- construction
def test_norm_converts_the_feature_path_only():
    seen = []
    DANN(build_backbone("lenet"), 10, SGD, norm=lambda m: seen.append(m) or m)
    assert [type(m).__name__ for m in seen] == ["LeNet", "Bottleneck"]


class FakeDomainNorm(DomainAwareNorm):
    def forward(self, x):
        return x


def add_domain_norm(module):
    if hasattr(module, "features"):
        module.features.append(FakeDomainNorm())
    return module


def test_method_that_cannot_split_refuses_domain_aware_norm():
    with pytest.raises(DomainSplitError, match="cannot split"):
        SourceOnly(build_backbone("lenet"), 10, SGD, norm=add_domain_norm)
    SourceOnly(build_backbone("lenet"), 10, SGD, norm=add_domain_norm, forward_target=True)


def test_single_source_method_refuses_several_sources(tmp_path):
    cfg = make_cfg(tmp_path, ["data=digits_bundled", "data.source=[mnist,usps]", "monitor=null", *QUICK])
    with pytest.raises(ValueError, match="one source domain"):
        train(cfg)
