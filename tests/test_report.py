"""Grouping of results in the report: by method and norm, or by run folder (grid layout)."""

import pytest

from lightning_da.report import markdown, table


def fake(method, norm, seed, acc, folder):
    run = {"method": method, "task": "mnist->usps", "seed": seed, "output_dir": f"/x/{folder}/seed{seed}",
           "last": {"test/target_acc": acc}, "oracle": {"val/target_acc": acc}}
    if norm != "absent":
        run["norm"] = norm
    return run


def test_report_groups_by_method_and_norm_or_by_folder():
    runs = [fake("CDAN", "bn", 0, 0.9, "cdan_bn"), fake("CDAN", "absent", 1, 0.8, "cdan_bn"),
            fake("CDAN", None, 2, 0.85, "cdan_bn"),
            fake("CDAN", "rn", 0, 0.95, "cdan_rn"), fake("CDAN", "rn", 1, 0.97, "cdan_rn")]
    rows = {r["method"]: r for r in table(runs)}
    assert set(rows) == {"CDAN", "CDAN + rn"}          # no norm recorded, or None (as built) = plain
    assert rows["CDAN"]["seeds"] == "3 seeds" and rows["CDAN + rn"]["last"] == "96.00 ± 1.41"
    assert "| CDAN + rn | mnist->usps | 2 seeds | 96.00 ± 1.41 |" in markdown(table(runs))
    by_folder = {r["method"] for r in table(runs, by_folder=True)}
    assert by_folder == {"cdan_bn", "cdan_rn"}


def _run(task, seed, acc, validators):
    return {"method": "DANN", "task": task, "seed": seed, "output_dir": f"/x/{task}/{seed}/{acc}",
            "last": {"test/target_acc": acc},
            "history": [{"epoch": 0, **{f"val/validator/{k}": v - 1 for k, v in validators.items()}},
                        {"epoch": 1, **{f"val/validator/{k}": v for k, v in validators.items()}}]}


def test_selection_picks_by_the_last_validator_values(tmp_path):
    from lightning_da.report import plot, selection

    runs = [_run("m->u", 0, 0.9, {"good": 3.0, "bad": 1.0}), _run("m->u", 0, 0.7, {"good": 2.0, "bad": 2.0}),
            _run("m->u", 0, 0.5, {"good": 1.0, "bad": 3.0}),
            _run("m->u", 1, 0.6, {"good": 1.0, "bad": 1.0}), _run("m->u", 1, 0.8, {"good": 2.0, "bad": 0.0})]
    rows = {r["validator"]: r for r in selection(runs)}
    assert rows["good"]["searches"] == 2
    assert rows["good"]["selected"] == pytest.approx(100 * (0.9 + 0.8) / 2)
    assert rows["bad"]["selected"] == pytest.approx(100 * (0.5 + 0.6) / 2)
    assert rows["good"]["oracle"] == pytest.approx(85.0) and rows["good"]["average"] == pytest.approx(100 * (0.7 + 0.7) / 2)
    assert rows["good"]["regret"] == pytest.approx(0.0) and rows["bad"]["regret"] == pytest.approx(30.0)
    assert rows["good"]["spearman"] == pytest.approx(1.0) and rows["bad"]["spearman"] == pytest.approx(-1.0)
    plot(runs, tmp_path / "v.png")
    assert (tmp_path / "v.png").stat().st_size > 1000
