"""Grouping of results in the report: by method and norm, or by run folder (grid layout)."""

from lightning_da.report import markdown, table


def fake(method, norm, seed, acc, folder):
    run = {"method": method, "task": "mnist->usps", "seed": seed, "output_dir": f"/x/{folder}/seed{seed}",
           "last": {"test/target_acc": acc}, "oracle": {"val/target_acc": acc}}
    if norm is not None:
        run["norm"] = norm
    return run


def test_report_groups_by_method_and_norm_or_by_folder():
    runs = [fake("CDAN", "bn", 0, 0.9, "cdan_bn"), fake("CDAN", None, 1, 0.8, "cdan_bn"),
            fake("CDAN", "rn", 0, 0.95, "cdan_rn"), fake("CDAN", "rn", 1, 0.97, "cdan_rn")]
    rows = {r["method"]: r for r in table(runs)}
    assert set(rows) == {"CDAN", "CDAN + rn"}                       # no norm recorded = bn
    assert rows["CDAN"]["seeds"] == 2 and rows["CDAN + rn"]["last"] == "96.00 ± 1.41"
    assert "| CDAN + rn | mnist->usps | 2 | 96.00 ± 1.41 |" in markdown(table(runs))
    by_folder = {r["method"] for r in table(runs, by_folder=True)}
    assert by_folder == {"cdan_bn", "cdan_rn"}
