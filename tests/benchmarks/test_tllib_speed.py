"""benchmarks.tllib_speed: the summary it prints and records (steps/s from the warm-up step on, the loss
differences against the one-thread run), the recorded command, and the committed record against it."""

import json

import pytest

from benchmarks.tllib_speed import measuring_args, summary
from conftest import ROOT


def test_summary_speed_and_loss_differences():
    base = {"loss": [1.0] * 600, "time": [0.1 * i for i in range(600)]}                 # 10 steps/s
    other = {"loss": [1.0] * 3 + [1.5] + [1.0] * 596, "time": [0.05 * i for i in range(600)]}
    rows = summary({"base": base, "threads2": other}, warmup=100)
    assert rows["base"] == {"threads": 1, "steps": 600, "steps_per_s": pytest.approx(10.0)}
    assert rows["threads2"]["steps_per_s"] == pytest.approx(20.0)
    assert rows["threads2"]["threads"] == 2
    assert rows["threads2"]["max_abs_loss_diff"] == pytest.approx(0.5)
    assert rows["threads2"]["first_step_differing"] == 3
    assert rows["threads2"]["mean_abs_loss_diff"] == pytest.approx(0.5 / 600)
    assert rows["threads2"]["last_500_mean_loss_diff"] == pytest.approx(0.0)


def test_recorded_command_is_the_measuring_one():
    argv = ["--reuse", "--steps", "2000", "--save", "results/x.json", "--out", "o", "--save=y.json"]
    assert measuring_args(argv) == ["--steps", "2000", "--out", "o"]


def test_committed_record_is_its_summary():
    record = json.loads((ROOT / "results" / "tllib_speed" / "digits_tllib_dan.json").read_text())
    assert record["source"] == "run" and record["command"][:3] == ["python", "-m", "benchmarks.tllib_speed"]
    assert "--reuse" not in record["command"] and "--save" not in record["command"]
    configs = record["configs"]
    assert set(configs) == {"base", "compile", "threads2"}
    assert configs["base"]["steps"] == record["steps"] == 2000
    docs = (ROOT / "docs" / "speed.md").read_text()
    for name in configs:   # the speed page quotes the record's steps/s
        assert f"| {configs[name]['steps_per_s']:.2f} |" in docs
