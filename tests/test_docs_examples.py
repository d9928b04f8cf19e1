"""The complete methods shown in README.md and docs/adding_a_method.md run as written: the one-loss
example is the library's BNM step for step, the multi-step example the library's MCD."""

import copy
import re
from functools import partial
from pathlib import Path

import pytest
import torch

from lightning_da import methods
from step_replay import OneBatchData, TinyBackbone, assert_same_state, run_batches

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "docs" / "adding_a_method.md"]


def doc_classes(page: Path) -> dict:
    """Execute every Python block of the page; return the classes it defines by name."""
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S):
        exec(compile(block, str(page), "exec"), namespace)
    return {k: v for k, v in namespace.items() if isinstance(v, type) and issubclass(v, methods.DAMethod)}


def batch():
    g = torch.Generator().manual_seed(0)
    return {"source": (torch.randn(10, 6, generator=g), torch.randint(0, 3, (10,), generator=g)),
            "target": (torch.randn(7, 6, generator=g) + 0.5, torch.arange(7))}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
@pytest.mark.parametrize("doc_name,library_cls,kwargs", [
    ("BNM", methods.BNM, {}),
    ("SmallMCD", methods.MCD, {"head": {"hidden": [100]}}),
])
def test_the_documented_method_trains_like_the_library_one(page, doc_name, library_cls, kwargs):
    doc_cls = doc_classes(page)[doc_name]
    sgd = partial(torch.optim.SGD, lr=0.1, momentum=0.9)
    torch.manual_seed(0)
    documented = doc_cls(TinyBackbone(), 3, sgd, bottleneck={"dim": 5})
    torch.manual_seed(0)
    library = library_cls(TinyBackbone(), 3, sgd, bottleneck={"dim": 5}, **kwargs)
    before = copy.deepcopy(library)
    for model in (documented, library):
        torch.manual_seed(1)  # the same dropout masks in both runs
        run_batches(model, data=OneBatchData(batch(), repeat=2))
    assert_same_state(documented, library)
    with pytest.raises(AssertionError):  # the steps moved the weights
        assert_same_state(library, before)
