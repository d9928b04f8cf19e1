"""The (weak, strong) target views (data/views.py): the batches on digits and on images, and the error
when a domain has no strong view."""

import pytest
import torch

from conftest import FEW, make_cfg
from lightning_da.data.domain import DataError, Domain
from lightning_da.data.views import strong_image_transform
from lightning_da.train import build


def test_strong_view_batches_on_digits(tmp_path):
    cfg = make_cfg(tmp_path, ["experiment=digits/fixmatch", "data=digits_bundled", *FEW])
    dm, model, _ = build(cfg)
    assert model.needs.strong_view and dm.strong_target_view
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))[0]
    (xw, xs), idx = batch["target"]
    assert xw.shape == xs.shape == (4, 1, 28, 28) and idx.shape == (4,)
    assert not torch.equal(xw, xs)
    assert batch["source"][0].shape == (4, 1, 28, 28)   # sources keep one view
    # the weak view is the stored digit itself: same as the evaluation view of that index
    weak_of_first = dm.domains[dm.target_name].train_eval[int(idx[0])][0]
    torch.testing.assert_close(xw[0], weak_of_first)


def test_strong_image_view_and_missing_view(office_subset):
    from lightning_da.data.images import image_domain

    d = image_domain("amazon", str(office_subset), path="amazon", transform={"resize": 72, "crop": 64})
    (weak, strong), y = d.train_strong[0]
    assert weak.shape == strong.shape == (3, 64, 64) and isinstance(y, int)
    t = strong_image_transform(72, 64)
    assert "RandAugment" in repr(t) and "ColorJitter" in repr(t)
    from lightning_da.data import DADataModule

    plain = Domain("features", torch.utils.data.TensorDataset(torch.randn(8, 3), torch.zeros(8).long()), ["a"])
    dm = DADataModule({"s": lambda **_: plain, "t": lambda **_: plain}, source="s", target="t", batch_size=2,
                      strong_target_view=True)
    with pytest.raises(DataError, match="no strong augmentation view"):
        dm.target_train
