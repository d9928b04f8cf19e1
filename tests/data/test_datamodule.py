"""The DataModule (data/datamodule.py): pairing, epoch length, drop_last, indices, multi-source, and the
input errors."""

from functools import partial

import pytest
import torch

from conftest import OFFICE_IMAGES, needs_shared
from lightning_da.data import DADataModule, DataError, Domain, TensorImages
from lightning_da.data.digits import bundled, mnist, usps
from lightning_da.data.images import image_domain


def tensor_domain(name, n, classes=("a", "b", "c"), size=8, offset=0, **_):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, size, size).contiguous() + offset
    return Domain(name, TensorImages(images, torch.arange(n) % len(classes)), list(classes))


def make_dm(source="s", target="t", sizes=None, classes=None, **kw):
    sizes = sizes or {"s": 50, "t": 23}
    classes = classes or {}
    domains = {n: partial(tensor_domain, n, k, classes.get(n, ("a", "b", "c")), offset=100 * i)
               for i, (n, k) in enumerate(sizes.items())}
    kw = {"batch_size": 4, "iters_per_epoch": 7, **kw}
    return DADataModule(domains, source, target, **kw)


def batches(dm):
    dm.setup("fit")
    loader = dm.train_dataloader()
    iter(loader)
    return list(loader)


def test_pairing_epoch_length_and_full_batches():
    dm = make_dm(target_batch_size=5)
    out = batches(dm)
    assert len(out) == 7  # iters_per_epoch, whatever the domain sizes (50 and 23)
    for batch, *_ in out:
        assert set(batch) == {"source", "target"}
        (xs, ys), (xt, idx) = batch["source"], batch["target"]
        assert xs.shape == (4, 1, 8, 8) and ys.shape == (4,)
        assert xt.shape == (5, 1, 8, 8) and idx.shape == (5,)


def test_target_indices_point_at_the_samples():
    dm = make_dm()
    for batch, *_ in batches(dm):
        xt, idx = batch["target"]
        for x, i in zip(xt, idx.tolist()):
            torch.testing.assert_close(x, dm.target_train[i][0])


def test_small_domain_cycles_through_all_samples():
    dm = make_dm(sizes={"s": 50, "t": 10}, iters_per_epoch=5, batch_size=4)
    seen = torch.cat([b["target"][1] for b, *_ in batches(dm)])
    assert len(seen) == 20 and set(seen.tolist()) == set(range(10))  # two full passes over 10 samples


def test_multi_source_batch_structure():
    dm = make_dm(source=["s1", "s2"], sizes={"s1": 30, "s2": 40, "t": 20})
    batch = batches(dm)[0][0]
    assert set(batch) == {"sources", "target"} and len(batch["sources"]) == 2
    assert all(x.shape[0] == 4 for x, _ in batch["sources"])


def test_eval_loaders_target_then_source():
    dm = DADataModule({"mnist": partial(bundled, "mnist"), "usps": partial(bundled, "usps")}, "mnist", "usps")
    assert dm.eval_names == ["target", "source"]
    assert [len(d) for d in dm.eval_sets()] == [2007, 2000]  # USPS test, MNIST test subset
    assert dm.num_classes == 10


def test_source_holdout_split_is_disjoint():
    dm = make_dm(source_holdout=0.2)
    train, held = dm.source_splits[0]
    assert len(held) == 10 and len(train) == 40
    assert not set(train.indices) & set(held.indices)
    assert dm.eval_names == ["target", "source"]


def test_class_mismatch_names_the_difference():
    dm = make_dm(classes={"t": ("a", "b", "d")})
    with pytest.raises(DataError, match=r"lacks: \['d'\]|\['d'\]") as err:
        dm.num_classes
    assert "'c'" in str(err.value) and "'s'" in str(err.value) and "'t'" in str(err.value)


def test_empty_domain_is_an_error():
    with pytest.raises(DataError, match="empty"):
        make_dm(sizes={"s": 50, "t": 0}).num_classes


def test_unknown_domain_lists_available():
    with pytest.raises(DataError, match=r"available|has: \['s', 't'\]"):
        make_dm(target="x")


def test_domain_smaller_than_batch_is_an_error():
    dm = make_dm(sizes={"s": 3, "t": 20})
    with pytest.raises(DataError, match="fewer than batch_size"):
        dm.setup("fit")


def test_missing_paths_name_path_and_layout(tmp_path):
    with pytest.raises(DataError, match=r"MNIST/raw") as err:
        mnist(str(tmp_path / "nowhere"))
    assert "nowhere" in str(err.value)
    with pytest.raises(DataError, match="usps.bz2"):
        usps(str(tmp_path))
    with pytest.raises(DataError, match="ImageFolder layout"):
        image_domain("amazon", str(tmp_path), path="amazon")
    with pytest.raises(DataError, match="image list"):
        image_domain("i", str(tmp_path), list_file="list/iList.txt")


@needs_shared(OFFICE_IMAGES)
def test_office_caltech_image_folders_share_classes():
    doms = {n: partial(image_domain, n, path=n, transform={"resize": 64, "crop": 56}) for n in ("amazon", "webcam")}
    dm = DADataModule(doms, "amazon", "webcam", root=str(OFFICE_IMAGES))
    assert dm.num_classes == 10 and len(dm.target_train) == 295
    assert dm.classes[0] == "backpack"
