"""The multi-source multi-modal data (data/multimodal.py): batch structure, word dropout, bad input."""

import json

import pytest

from conftest import OFFICE_IMAGES, mm_domains
from lightning_da.data.domain import DataError, check_same_classes
from lightning_da.data.multimodal import (MultiSourceDataModule, amazon_review_domain, cat_inputs, multimodal_domain,
                                          read_json_list, word_dropout)


def test_multisource_batch_structure(mm_root):
    dm = MultiSourceDataModule(mm_domains(mm_root), source="rest", target="dslr", batch_size=4, n_sample=10)
    assert dm.source_names == ["amazon", "webcam"] and dm.iters_per_epoch == 3
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    batch = batch[0] if isinstance(batch, tuple) else batch
    assert set(batch) == {"sources", "target"} and len(batch["sources"]) == 2
    for x, y in batch["sources"]:
        assert set(x) == {"text", "text_strong", "image", "image_strong", "image_mask"}
        assert x["image"].shape == (4, 2, 3, 32, 32) and x["image_mask"].shape == (4, 2) and len(x["text"]) == 4
        assert y.shape == (4,)
        # padded image slots are zeros, real ones are not
        assert (x["image"][~x["image_mask"]] == 0).all() and (x["image"][x["image_mask"]] != 0).any()
    xt, idx = batch["target"]
    assert xt["image"].shape[0] == 4 and idx.max() < 12
    # the target sampler can be restricted to selected samples (UACR)
    dm.set_target_pool([1, 5])
    seen = {int(i) for b in dm.train_dataloader() for i in (b[0] if isinstance(b, tuple) else b)["target"][1]}
    assert seen == {1, 5}
    # combined sources: one source batch of both sources' rows
    dm2 = MultiSourceDataModule(mm_domains(mm_root), source="rest", target="dslr", batch_size=4, n_sample=8, combine_sources=True)
    dm2.setup("fit")
    b = next(iter(dm2.train_dataloader()))
    b = dm2.on_before_batch_transfer(b[0] if isinstance(b, tuple) else b, 0)
    assert len(b["source"][0]["text"]) == 8 and b["source"][0]["image"].shape[0] == 8 and b["source"][1].shape == (8,)
    assert cat_inputs([["a"], ["b", "c"]]) == ["a", "b", "c"]


def test_word_dropout():
    import random

    text = " ".join(f"w{i}" for i in range(2000))
    kept = word_dropout(text, 0.1, random.Random(0)).split()
    assert 1700 < len(kept) < 1900 and word_dropout("[CLS] a [SEP]", 1.0) == "[CLS] [SEP]"


def test_bad_multimodal_input(mm_root, tmp_path):
    good = json.loads((mm_root / "amazon.json").read_text())
    cases = {
        "missing.json": (None, "not found"),
        "empty.json": ([], "no entries"),
        "label.json": ([{**good[0], "label": 5}], "outside"),
        "many.json": ([{**good[0], "image": good[0]["image"] * 3}], "more than max_images=2"),
        "notext.json": ([{**good[0], "text": []}], "'text' must be"),
    }
    for name, (entries, msg) in cases.items():
        if entries is not None:
            (tmp_path / name).write_text(json.dumps(entries))
        with pytest.raises(DataError, match=msg):
            read_json_list(str(tmp_path / name), num_classes=2, max_images=2)
    (tmp_path / "ghost.json").write_text(json.dumps([{**good[0], "image": ["backpack/nope.jpg"]}]))
    with pytest.raises(DataError, match="nope.jpg"):
        multimodal_domain("amazon", str(tmp_path / "ghost.json"), str(OFFICE_IMAGES / "amazon"), ["backpack", "bike"])
    with pytest.raises(DataError, match="image root"):
        multimodal_domain("amazon", str(mm_root / "amazon.json"), str(tmp_path / "nowhere"), ["backpack", "bike"])
    a = multimodal_domain("amazon", str(mm_root / "amazon.json"), str(OFFICE_IMAGES / "amazon"), ["backpack", "bike"], max_images=2)
    b = multimodal_domain("webcam", str(mm_root / "webcam.json"), str(OFFICE_IMAGES / "webcam"), ["bike", "backpack"], max_images=2)
    with pytest.raises(DataError, match="class lists differ"):
        check_same_classes([a, b])
    with pytest.raises(DataError, match="review file not found"):
        amazon_review_domain("books", root=str(tmp_path))
