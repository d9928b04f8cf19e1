"""The published results tables are exactly what their committed records give, and a table is built
as documented: mean ± sample std in percent, transcribed numbers marked, old experiment names kept."""

import json

import pytest
import yaml

from benchmarks import tables


def test_committed_tables_equal_their_records():
    assert tables.run(check=True) == [], "regenerate with: python -m benchmarks.tables"


def record(exp, task, seed, last, best=None, oracle=None, source="run"):
    metrics = {"last": {"target_acc": last}}
    if best is not None:
        metrics["best"] = {"monitor": "val/source_acc", "target_acc": best}
    if oracle is not None:
        metrics["oracle"] = {"target_acc": oracle}
    return {"source": source, "experiment": exp, "task": task, "seed": seed, "metrics": metrics,
            "overrides": [f"experiment={exp}", f"task={task}", f"seed={seed}", "paths.data_dir=/d"]}


@pytest.fixture
def repo(tmp_path, monkeypatch):
    (tmp_path / "results" / "bench").mkdir(parents=True)
    (tmp_path / "conf" / "experiment").mkdir(parents=True)
    (tmp_path / "conf" / "experiment" / "old_dann.yaml").write_text(
        "defaults: [/experiment/digits/dann]\nrenamed_experiment: {old: old_dann, new: digits/dann}\n")
    monkeypatch.setattr(tables, "ROOT", tmp_path)
    monkeypatch.setattr(tables, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(tables, "SPEC", tmp_path / "results" / "tables")
    (tmp_path / "results" / "tables").mkdir()
    return tmp_path


def write(repo, name, rec):
    (repo / "results" / "bench" / name).write_text(json.dumps(rec))


def test_a_table_from_records(repo):
    write(repo, "a.json", record("digits/dann", "m2u", 0, 0.90, 0.89, 0.91))
    write(repo, "b.json", record("old_dann", "m2u", 1, 0.92, 0.93, 0.95))  # an old name counts in its row
    write(repo, "c.json", record("digits/cdan_e", "m2u", 0, 0.8812, source="transcribed"))
    write(repo, "d.json", {"source": "transcribed", "experiment": "digits/mcd", "task": "m2u", "seeds": [0, 1, 2],
                           "aggregate": {"last": {"mean": 0.8623, "std": 0.0163}}})
    spec = {"tables": [{"id": "t", "page": "page.md", "records": "bench",
                        "columns": ["seeds", "last", "best", "oracle", "published", "command"],
                        "rows": [{"method": "DANN", "task": "m2u", "experiment": "digits/dann", "published": "91.7"},
                                 {"method": "CDAN+E", "task": "m2u", "experiment": "digits/cdan_e"},
                                 {"method": "MCD", "task": "m2u", "experiment": "digits/mcd"},
                                 {"method": "JAN", "task": "m2u", "experiment": "digits/jan"}]}]}
    (repo / "results" / "tables" / "page.yaml").write_text(yaml.safe_dump(spec))
    (repo / "page.md").write_text("intro\n<!-- results:t -->\nold\n<!-- /results:t -->\noutro\n")
    assert tables.run(check=True) == ["t"]
    assert tables.run(check=False) == ["t"] and tables.run(check=True) == []
    text = (repo / "page.md").read_text()
    lines = text.splitlines()
    assert lines[0] == "intro" and lines[-1] == "outro"
    assert "| method | task | seeds | last | best by `val/source_acc` | oracle | published | command |" in text
    # DANN: mean ± sample std of 90 and 92 is 91.00 ± 1.41
    assert "| DANN | M -> U | 0, 1 | 91.00 ± 1.41 | 91.00 ± 2.83 | 93.00 ± 2.83 | 91.7 | " \
           "`python run.py experiment=digits/dann task=m2u seed=N` |" in text
    assert "| CDAN+E | M -> U | 0 | 88.12 † | n/a | n/a |  |" in text
    assert "| MCD | M -> U | 0, 1, 2 | 86.23 ± 1.63 † | n/a | n/a |" in text
    assert "| JAN | M -> U | n/a | n/a | n/a | n/a |" in text
    assert "† transcribed" in text


def test_task_labels():
    assert [tables.task_label(t) for t in ("m2u", "u2m", "mnistm", "a2w", "surf_decaf_c2d")] == \
        ["M -> U", "U -> M", "M -> MNIST-M", "A -> W", "C -> D"]


def test_a_page_without_the_tables_marks_is_an_error(repo):
    (repo / "results" / "tables" / "page.yaml").write_text(yaml.safe_dump(
        {"tables": [{"id": "t", "page": "page.md", "records": "bench", "rows": []}]}))
    (repo / "page.md").write_text("no marks here\n")
    with pytest.raises(ValueError, match=r"page.md has no <!-- results:t -->"):
        tables.run(check=True)
