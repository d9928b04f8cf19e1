"""Method construction: the norm scope, the domain-split refusal and the multi-source refusal."""

from functools import partial

import pytest
import torch

from conftest import QUICK, make_cfg
from lightning_da.methods import DANN, SourceOnly
from lightning_da.models import build_backbone
from lightning_da.norm import DomainAwareNorm, DomainSplitError
from lightning_da.train import train

SGD = partial(torch.optim.SGD, lr=0.01)


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
