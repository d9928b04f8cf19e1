"""FixMatch: the masked loss and its threshold, the (weak, strong) target views, and a few steps of the
FixMatch / source-only experiment configs on real digits and Office-Caltech10 images."""

import pytest
import torch
import torch.nn.functional as F

from conftest import QUICK, make_cfg
from lightning_da.data.domain import DataError, Domain
from lightning_da.data.views import strong_image_transform
from lightning_da.losses import fixmatch_loss
from lightning_da.train import build, train

FEW = [*QUICK, "data.iters_per_epoch=2", "data.batch_size=4", "trainer.max_epochs=1"]
SMALL_IMAGES = ["data.domain_args.transform.resize=72", "data.domain_args.transform.crop=64", "data.num_workers=0",
                "data.pin_memory=false", "data.persistent_workers=false"]


def test_fixmatch_loss_mask_and_threshold():
    probs = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.05, 0.95], [0.3, 0.7]])
    logits = torch.randn(4, 2, requires_grad=True)
    loss, mask, pseudo = fixmatch_loss(logits, probs, threshold=0.9)
    assert mask.tolist() == [True, False, True, False] and pseudo.tolist() == [0, 0, 1, 1]
    ce = [F.cross_entropy(logits[i:i + 1], pseudo[i:i + 1]).item() for i in range(4)]
    assert loss.item() == pytest.approx((ce[0] + ce[2]) / 4)  # averaged over the whole batch
    _, strict_mask, _ = fixmatch_loss(logits, probs, threshold=0.9, strict=True)
    assert strict_mask.tolist() == [False, False, True, False]  # 0.9 is not > 0.9
    loss.backward()
    assert logits.grad[1].abs().sum() == 0 and logits.grad[3].abs().sum() == 0  # masked rows get no gradient
    p = probs.clone().requires_grad_(True)
    fixmatch_loss(logits.detach().requires_grad_(True), p, 0.5)[0].backward()
    assert p.grad is None  # labels and mask carry no gradient


def test_strong_view_batches_on_digits(tmp_path):
    cfg = make_cfg(tmp_path, ["experiment=fixmatch_digits", "data=digits_bundled", *FEW])
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


def test_fixmatch_digits_experiment(tmp_path):
    res = train(make_cfg(tmp_path, ["experiment=fixmatch_digits", "data=digits_bundled", *FEW]))
    assert res["method"] == "FixMatch" and res["steps"] == 2 and 0 <= res["last"]["test/target_acc"] <= 1


@pytest.mark.parametrize("experiment", ["fixmatch_office_caltech", "office_caltech_source_only"])
def test_office_caltech_experiments(tmp_path, office_subset, experiment):
    res = train(make_cfg(tmp_path, [f"experiment={experiment}", f"data.root={office_subset}", *SMALL_IMAGES, *FEW]))
    assert res["steps"] == 2 and 0 <= res["last"]["test/target_acc"] <= 1


def test_fixmatch_with_domain_aware_norm(tmp_path):
    res = train(make_cfg(tmp_path, ["experiment=fixmatch_digits", "data=digits_bundled", "backbone=lenet_bn",
                                    "norm=dsbn", *FEW]))
    assert res["steps"] == 2
