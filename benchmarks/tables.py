"""Every published results table, generated from the committed result records.

    python -m benchmarks.tables            # rewrite the tables in the docs pages (and the README summary)
    python -m benchmarks.tables --check    # exit 1, naming them, if a committed table differs from its records

The tables are declared in ``results/tables/*.yaml`` (one file per docs page): for each, the page it lives in, the records folder
(``results/<records>/``), its rows (experiment, task, label, the published number it is compared
with) and its columns. In the page, a table sits between ``<!-- results:<id> -->`` and
``<!-- /results:<id> -->``; everything between the two marks is generated, so a number in a table is
always one a record holds.

A row may name its own records folder (``records:``), e.g. a summary table over several benchmarks.
A record (``benchmarks/records.py``) is one run: ``results/<records>/<experiment>/<task>/seed<k>.json``
with ``metrics.last`` / ``metrics.best`` / ``metrics.oracle``. A cell is the mean ± sample standard
deviation over the row's seeds, in percent. Records marked ``"source": "transcribed"`` hold numbers
copied from an earlier report whose run files were lost; their cells carry a dagger (†) and the table
says so. A transcribed record may hold a row's mean and spread only (``aggregate``), when the report
gave no per-seed values.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
SPEC = RESULTS / "tables"
#: columns a table can show, and their headers (``best`` names the monitor of its records)
COLUMNS = ("seeds", "last", "best", "oracle", "last_mean_class", "published", "command")
DAGGER = "†"


def canonical(experiment: str) -> str:
    """An experiment's current name: an old name forwards to its new one (``renamed_experiment`` of its
    file under ``conf/experiment``), so records written under the old name stay in their rows."""
    path = ROOT / "conf" / "experiment" / f"{experiment}.yaml"
    if path.is_file():
        forward = (yaml.safe_load(path.read_text()) or {}).get("renamed_experiment")
        if forward:
            return forward["new"]
    return experiment


def load_records(folder: str) -> list[dict]:
    """Every record under ``results/<folder>/``, its experiment under its current name."""
    base = RESULTS / folder
    if not base.is_dir():
        return []
    records = [json.loads(p.read_text()) for p in sorted(base.rglob("*.json"))]
    for r in records:
        r["experiment"] = canonical(r["experiment"])
    return records


def row_records(records: list[dict], row: dict) -> list[dict]:
    return sorted((r for r in records if r["experiment"] == row["experiment"] and r["task"] == row["task"]),
                  key=lambda r: (r.get("seed") is None, r.get("seed") or 0))


def metric(record: dict, column: str) -> float | None:
    """The target accuracy a record holds for a column (a fraction), or None."""
    m = record.get("metrics", {})
    if column == "last":
        return (m.get("last") or {}).get("target_acc")
    if column == "last_mean_class":
        return (m.get("last") or {}).get("target_acc_mean_class")
    if column in ("best", "oracle"):
        return (m.get(column) or {}).get("target_acc")
    raise KeyError(column)


def fmt(values: list[float], aggregate: dict | None = None) -> str:
    """``mean ± std`` in percent with two decimals (one value: the value; none: n/a)."""
    if aggregate is not None:
        return f"{100 * aggregate['mean']:.2f} ± {100 * aggregate['std']:.2f}" if aggregate.get("std") is not None \
            else f"{100 * aggregate['mean']:.2f}"
    if not values:
        return "n/a"
    pct = [100 * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.2f}"
    return f"{statistics.mean(pct):.2f} ± {statistics.stdev(pct):.2f}"


def cell(recs: list[dict], column: str) -> str:
    transcribed = any(r.get("source") == "transcribed" for r in recs)
    aggregates = [r for r in recs if "aggregate" in r]
    if aggregates:
        text = fmt([], (aggregates[0]["aggregate"].get(column) or {"mean": float("nan"), "std": None}))
        if text.startswith("nan"):
            text = "n/a"
    else:
        text = fmt([v for v in (metric(r, column) for r in recs) if v is not None])
    return f"{text} {DAGGER}" if transcribed and text != "n/a" else text


def seeds_of(recs: list[dict]) -> str:
    seeds = sorted({s for r in recs for s in (r.get("seeds") or [r.get("seed")]) if s is not None})
    return ", ".join(map(str, seeds)) if seeds else "n/a"


def command_of(recs: list[dict], row: dict) -> str:
    if row.get("command"):
        return f"`{row['command']}`"
    runs = [r for r in recs if r.get("overrides")]
    if not runs:
        return ""
    keep = [o for o in runs[0]["overrides"] if not o.startswith(("seed=", "paths.data_dir=", "hydra."))]
    return "`python run.py " + " ".join(keep) + " seed=N`"


def best_header(records: list[dict]) -> str:
    monitors = sorted({(r.get("metrics", {}).get("best") or {}).get("monitor") for r in records} - {None})
    return f"best by `{monitors[0]}`" if len(monitors) == 1 else "best (by the run's monitor)"


def task_label(task: str) -> str:
    """``m2u`` -> ``M -> U``, ``surf_decaf_c2d`` -> ``C -> D``, ``mnistm`` -> ``M -> MNIST-M``."""
    if task == "mnistm":
        return "M -> MNIST-M"
    pair = task.rsplit("_", 1)[-1]
    if len(pair) == 3 and pair[1] == "2":
        return f"{pair[0].upper()} -> {pair[2].upper()}"
    return task


HEADERS = {"seeds": "seeds", "last": "last", "oracle": "oracle", "last_mean_class": "last, mean per class",
           "published": "published", "command": "command"}


def render(table: dict) -> str:
    """The Markdown of one table (without its marks)."""
    records = load_records(table["records"]) if "records" in table else []
    columns = table.get("columns", ["seeds", "last", "best", "oracle", "published"])
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        raise ValueError(f"table {table['id']}: unknown columns {unknown}; known: {list(COLUMNS)}")
    labels = table.get("labels", ["method", "task"])
    header = [*labels, *(best_header(records) if c == "best" else HEADERS[c] for c in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    any_transcribed = False
    for row in table["rows"]:
        recs = row_records(load_records(row["records"]) if "records" in row else records, row)
        any_transcribed |= any(r.get("source") == "transcribed" for r in recs)
        cells = [row.get("task_label", task_label(row["task"])) if k == "task" else str(row.get(k, "")) for k in labels]
        for c in columns:
            if c == "seeds":
                cells.append(seeds_of(recs))
            elif c == "published":
                cells.append(str(row.get("published", "")))
            elif c == "command":
                cells.append(command_of(recs, row))
            else:
                cells.append(cell(recs, c))
        lines.append("| " + " | ".join(cells) + " |")
    if any_transcribed:
        lines += ["", f"{DAGGER} transcribed from an earlier report of these runs, whose run files were lost "
                      "(two decimals as reported); a re-run replaces it."]
    return "\n".join(lines)


def marks(table_id: str) -> tuple[str, str]:
    return f"<!-- results:{table_id} -->", f"<!-- /results:{table_id} -->"


def generated_page(text: str, table: dict) -> str:
    start, end = marks(table["id"])
    if start not in text or end not in text:
        raise ValueError(f"{table['page']} has no {start} ... {end} block for table {table['id']}")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{render(table)}\n{end}{tail}"


def load_spec(folder: Path | None = None) -> list[dict[str, Any]]:
    """Every table declared in ``results/tables/*.yaml`` (each file: ``tables: [...]``)."""
    tables = [t for path in sorted((folder or SPEC).glob("*.yaml")) for t in (yaml.safe_load(path.read_text())["tables"] or [])]
    ids = [t["id"] for t in tables]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise ValueError(f"results/tables: table ids used twice: {dup}")
    return tables


def run(check: bool, only: list[str] | None = None) -> list[str]:
    """Regenerate (or with ``check`` compare) every table; returns the ids whose page text differs."""
    differ = []
    pages: dict[Path, str] = {}
    for table in load_spec():
        if only and table["id"] not in only:
            continue
        page = ROOT / table["page"]
        text = pages.get(page, page.read_text())
        new = generated_page(text, table)
        if new != text:
            differ.append(table["id"])
        pages[page] = new
    if not check:
        for page, text in pages.items():
            if page.read_text() != text:
                page.write_text(text)
    return differ


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 if a committed table differs")
    ap.add_argument("--only", nargs="+", help="table ids")
    args = ap.parse_args()
    differ = run(args.check, args.only)
    if args.check and differ:
        print(f"tables that differ from their records: {differ}; regenerate with python -m benchmarks.tables")
        sys.exit(1)
    print(f"{'checked' if args.check else 'wrote'} the tables; {'differing' if args.check else 'changed'}: {differ or 'none'}")


if __name__ == "__main__":
    main()
