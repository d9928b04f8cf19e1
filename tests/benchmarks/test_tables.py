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


def test_rows_pick_settings_by_overrides_and_seeds(repo):
    # a grid files a setting under its own key; the record's overrides name its experiment
    for seed, (bn, rn) in enumerate([(0.95, 0.91), (0.96, 0.95)]):
        for norm, acc in (("bn", bn), ("rn", rn)):
            rec = record("cdan_e_" + norm, "m2u", seed, acc)
            rec["overrides"] = ["experiment=digits/norm_cdan_e", f"norm={norm}", "task=m2u", f"seed={seed}",
                                "paths.data_dir=/d", "data.num_workers=0"]
            write(repo, f"{norm}{seed}.json", rec)
    write(repo, "plain.json", record("digits/adda", "m2u", 0, 0.10))
    stable = record("digits/adda", "m2u", 0, 0.84)
    stable["overrides"] += ["optimizer.lr=0.001"]
    write(repo, "stable.json", stable)
    rows = [{"norm": "bn", "task": "m2u", "experiment": "digits/norm_cdan_e", "overrides": ["norm=bn"]},
            {"norm": "rn", "task": "m2u", "experiment": "digits/norm_cdan_e", "overrides": ["norm=rn"], "seeds": [1]},
            {"norm": "adda", "task": "m2u", "experiment": "digits/adda", "overrides": []},
            {"norm": "adda lr", "task": "m2u", "experiment": "digits/adda", "overrides": ["optimizer.lr=0.001"]}]
    text = tables.render({"id": "t", "records": "bench", "columns": ["seeds", "last", "command"],
                          "labels": ["norm"], "rows": rows})
    assert "| bn | 0, 1 | 95.50 ± 0.71 | `python run.py experiment=digits/norm_cdan_e norm=bn task=m2u data.num_workers=0 seed=N` |" in text
    assert "| rn | 1 | 95.00 |" in text
    assert "| adda | 0 | 10.00 |" in text and "| adda lr | 0 | 84.00 |" in text


def test_per_seed_values_and_an_aggregate_of_the_other_metrics(repo):
    # the report gave last per seed, best and oracle as mean ± std only
    for seed, acc in enumerate([0.7693, 0.7763, 0.7828]):
        write(repo, f"s{seed}.json", record("digits/source_only", "m2u", seed, acc, source="transcribed"))
    write(repo, "agg.json", {"source": "transcribed", "experiment": "digits/source_only", "task": "m2u", "seeds": [0, 1, 2],
                             "aggregate": {"best": {"mean": 0.7731, "std": 0.0035, "monitor": "val/source_acc"},
                                           "oracle": {"mean": 0.7844, "std": 0.0061}}})
    text = tables.render({"id": "t", "records": "bench", "columns": ["seeds", "last", "best", "oracle", "last_per_seed"],
                          "rows": [{"method": "SO", "task": "m2u", "experiment": "digits/source_only"}]})
    assert "| method | task | seeds | last | best by `val/source_acc` | oracle | last per seed |" in text
    assert "| SO | M -> U | 0, 1, 2 | 77.61 ± 0.68 † | 77.31 ± 0.35 † | 78.44 ± 0.61 † | 76.93 / 77.63 / 78.28 |" in text


def test_splits_task_means_and_the_wide_layout(repo):
    for task, values in (("surf_decaf_c2d", [0.90, 0.80]), ("surf_decaf_d2d", [0.70, 0.60])):
        for split, acc in enumerate(values):
            rec = record("hda/ssan", task, 2020, acc, oracle=acc + 0.05)
            rec["split"] = split
            write(repo, f"{task}{split}.json", rec)
    write(repo, "pub.json", {"source": "transcribed", "experiment": "hda/ssan", "task": "surf_decaf_w2w", "seeds": [0],
                             "aggregate": {"last": {"mean": 0.5, "std": None}}})
    tasks = ["surf_decaf_c2d", "surf_decaf_d2d"]
    text = tables.render({"id": "t", "records": "bench", "decimals": 1, "columns": ["splits", "last"], "labels": ["task"],
                          "headers": {"last": "SSAN last"},
                          "rows": [{"experiment": "hda/ssan", "task": "surf_decaf_c2d"},
                                   {"experiment": "hda/ssan", "tasks": tasks, "task_label": "average"}]})
    assert "| task | splits | SSAN last |" in text
    assert "| C -> D | 0, 1 | 85.0 ± 7.1 |" in text
    assert "| average | 0, 1 | 75.0 ± 7.1 |" in text  # per split: 80, 70
    wide = tables.render({"id": "w", "records": "bench", "layout": "wide", "tasks": [*tasks, "surf_decaf_w2w"],
                          "mean_column": "mean", "labels": ["method"],
                          "rows": [{"method": "SSAN", "experiment": "hda/ssan"},
                                   {"method": "SSAN oracle", "experiment": "hda/ssan", "metric": "oracle"},
                                   {"method": "paper", "cells": {"surf_decaf_c2d": "95.8", "mean": "90"}}]})
    lines = wide.splitlines()
    assert lines[0] == "| method | C -> D | D -> D | W -> W | mean |"
    assert lines[2] == "| SSAN | 85.00 ± 7.07 | 65.00 ± 7.07 | 50.00 † | 66.67 † |"  # a task without splits: mean of means
    assert lines[3] == "| SSAN oracle | 90.00 ± 7.07 | 70.00 ± 7.07 | n/a | n/a |"
    assert lines[4] == "| paper | 95.8 |  |  | 90 |"
    assert tables.FOOTNOTE in wide
