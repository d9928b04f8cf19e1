"""Every published results table, generated from the committed result records.

    python -m benchmarks.tables            # rewrite the tables in the docs pages (and the README summary)
    python -m benchmarks.tables --check    # exit 1, naming them, if a committed table differs from its records

The tables are declared in ``results/tables/*.yaml`` (one file per docs page): for each, the page it lives in, the records folder
(``results/<records>/``), its rows (experiment, task, label, the published number it is compared
with) and its columns. In the page, a table sits between ``<!-- results:<id> -->`` and
``<!-- /results:<id> -->``; everything between the two marks is generated, so a number in a table is
always one a record holds.

A row may name its own records folder (``records:``), e.g. a summary table over several benchmarks;
``records`` may also be a list of folders.
A row picks records by ``experiment`` and ``task`` (a record's experiment is the one its ``overrides``
name, under its current name) and, where a folder holds several settings of one experiment, by
``overrides``: the record's own overrides beyond experiment, task, seed, split and where it reads or
writes (:data:`IGNORED`) must be exactly these; ``seeds`` / ``splits`` keep only those runs. A row with
``tasks: [...]`` instead of ``task`` is the mean over those tasks: per seed (or split) when every task
has the same seeds, then mean ± std over them; else the mean of the task means.
A table with ``layout: wide`` has one column per task of ``tasks`` (and ``mean_column``, the mean over
them), one row per setting; its cells show ``metric`` (per row or per table: last, best or oracle); a row
with ``cells`` and no experiment is a row of published numbers. ``decimals`` (default 2) and ``headers``
(column -> header text) adjust the rendering.
A record (``benchmarks/records.py``) is one run: ``results/<records>/<experiment>/<task>/seed<k>.json``
with ``metrics.last`` / ``metrics.best`` / ``metrics.oracle``. A cell is the mean ± sample standard
deviation over the row's seeds, in percent. Records marked ``"source": "transcribed"`` hold numbers
copied from an earlier report whose run files were lost; their cells carry a dagger (†) and the table
says so. A transcribed record may hold a row's mean and spread only (``aggregate``), when the report
gave no per-seed values.
"""

from __future__ import annotations

import argparse
import functools
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
COLUMNS = ("seeds", "splits", "last", "best", "oracle", "last_mean_class", "last_per_seed", "published", "command")
#: overrides that say which run of a setting it is, or where it reads or writes, not which setting it is
IGNORED = ("experiment=", "task=", "seed=", "data.split=", "paths.", "hydra.", "ckpt_path=", "data.root=",
           "data.num_workers=", "logger=", "callbacks=")
DAGGER = "†"


def canonical(experiment: str) -> str:
    """An experiment's current name: an old name forwards to its new one (``renamed_experiment`` of its
    file under ``conf/experiment``), so records written under the old name stay in their rows."""
    return _canonical(ROOT, experiment)


@functools.lru_cache(maxsize=None)
def _canonical(root: Path, experiment: str) -> str:
    path = root / "conf" / "experiment" / f"{experiment}.yaml"
    if path.is_file():
        forward = (yaml.safe_load(path.read_text()) or {}).get("renamed_experiment")
        if forward:
            return forward["new"]
    return experiment


def record_experiment(record: dict) -> str:
    """The experiment a record ran: the one its overrides name (a grid may file a setting under its own
    key), else its ``experiment`` field; under its current name."""
    named = [o.split("=", 1)[1] for o in record.get("overrides") or [] if o.startswith("experiment=")]
    return canonical(named[0] if named else record["experiment"])


def load_records(folder: str) -> list[dict]:
    """Every record under ``results/<folder>/``, its experiment under its current name."""
    base = RESULTS / folder
    if not base.is_dir():
        return []
    records = [json.loads(p.read_text()) for p in sorted(base.rglob("*.json"))]
    for r in records:
        r["experiment"] = record_experiment(r)
    return records


def variant(record: dict) -> set[str]:
    """A record's overrides beyond its experiment, task, seed, split and locations (:data:`IGNORED`)."""
    return {o for o in record.get("overrides") or [] if not o.startswith(IGNORED)}


def unit(record: dict):
    """What a run is one draw of: its split (heterogeneous DA) or its seed."""
    return record["split"] if "split" in record else record.get("seed")


def row_records(records: list[dict], row: dict, task: str | None = None) -> list[dict]:
    task = task or row["task"]
    picked = [r for r in records if r["experiment"] == row["experiment"] and r["task"] == task]
    if "overrides" in row:
        picked = [r for r in picked if variant(r) == set(row["overrides"] or [])]
    for key, field in (("seeds", "seed"), ("splits", "split")):
        if key in row:
            keep = set(row[key])
            picked = [r for r in picked if (r.get(field) in keep if field in r else set(r.get(key) or []) <= keep)]
    return sorted(picked, key=lambda r: (unit(r) is None, unit(r) or 0))


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


def fmt(values: list[float], aggregate: dict | None = None, decimals: int = 2) -> str:
    """``mean ± std`` in percent (one value: the value; none: n/a)."""
    if aggregate is not None:
        return f"{100 * aggregate['mean']:.{decimals}f} ± {100 * aggregate['std']:.{decimals}f}" \
            if aggregate.get("std") is not None else f"{100 * aggregate['mean']:.{decimals}f}"
    if not values:
        return "n/a"
    pct = [100 * v for v in values]
    if len(pct) == 1:
        return f"{pct[0]:.{decimals}f}"
    return f"{statistics.mean(pct):.{decimals}f} ± {statistics.stdev(pct):.{decimals}f}"


def runs_and_aggregate(recs: list[dict], column: str) -> tuple[dict, dict | None]:
    """The per-run values of a column ({unit: value}) and, when these do not cover every run of the
    row, the transcribed aggregate of that column (a report that gave per-seed values for some
    metrics only gave the others as mean ± std)."""
    runs = [r for r in recs if "aggregate" not in r]
    values = {unit(r): v for r in runs if (v := metric(r, column)) is not None}
    agg = next((r["aggregate"][column] for r in recs if "aggregate" in r
                and (r["aggregate"].get(column) or {}).get("mean") is not None), None)
    return values, (agg if agg is not None and len(values) < len(runs) or not runs else None)


def is_transcribed(recs: list[dict]) -> bool:
    return any(r.get("source") == "transcribed" for r in recs)


def cell(recs: list[dict], column: str, decimals: int = 2) -> str:
    values, agg = runs_and_aggregate(recs, column)
    text = fmt([], agg, decimals) if agg is not None else fmt(list(values.values()), decimals=decimals)
    return f"{text} {DAGGER}" if is_transcribed(recs) and text != "n/a" else text


def task_mean_cell(recs_by_task: list[list[dict]], column: str, decimals: int = 2) -> str:
    """The mean over tasks: per seed (split) when every task has the same ones, then mean ± std over
    them; else the mean of the task means; n/a when a task has nothing."""
    parts = [runs_and_aggregate(recs, column) for recs in recs_by_task]
    if not parts:
        return "n/a"
    units = [set(values) for values, agg in parts]
    if all(agg is None for _, agg in parts) and units[0] and all(u == units[0] for u in units):
        text = fmt([statistics.mean(values[u] for values, _ in parts) for u in sorted(units[0])], decimals=decimals)
    else:
        means = [agg["mean"] if agg is not None else (statistics.mean(values.values()) if values else None)
                 for values, agg in parts]
        if any(m is None for m in means):
            return "n/a"
        text = fmt([], {"mean": statistics.mean(means)}, decimals)
    transcribed = any(is_transcribed(recs) for recs in recs_by_task)
    return f"{text} {DAGGER}" if transcribed else text


def per_seed(recs: list[dict], column: str = "last") -> str:
    values, _ = runs_and_aggregate(recs, column)
    return " / ".join(f"{100 * values[u]:.2f}" for u in sorted(values)) if values else "n/a"


def seeds_of(recs: list[dict], key: str = "seeds") -> str:
    field = key[:-1]
    seeds = sorted({s for r in recs for s in (r.get(key) or [r.get(field)]) if s is not None})
    return ", ".join(map(str, seeds)) if seeds else "n/a"


def command_of(recs: list[dict], row: dict) -> str:
    if row.get("command"):
        return f"`{row['command']}`"
    runs = [r for r in recs if r.get("overrides")]
    if runs:
        keep = [o for o in runs[0]["overrides"] if not o.startswith(("seed=", "paths.", "hydra.", "ckpt_path=", "data.root="))]
    else:  # no record yet: the row's own setting
        keep = [f"experiment={row['experiment']}", f"task={row['task']}", *(row.get("overrides") or [])]
    return "`python run.py " + " ".join(keep) + " seed=N`"


def best_header(records: list[dict]) -> str:
    monitors = sorted({(r.get("metrics", {}).get("best") or r.get("aggregate", {}).get("best") or {}).get("monitor")
                       for r in records} - {None})
    return f"best by `{monitors[0]}`" if len(monitors) == 1 else "best (by the run's monitor)"


def task_label(task: str) -> str:
    """``m2u`` -> ``M -> U``, ``surf_decaf_c2d`` -> ``C -> D``, ``mnistm`` -> ``M -> MNIST-M``."""
    if task == "mnistm":
        return "M -> MNIST-M"
    pair = task.rsplit("_", 1)[-1]
    if len(pair) == 3 and pair[1] == "2":
        return f"{pair[0].upper()} -> {pair[2].upper()}"
    return task


HEADERS = {"seeds": "seeds", "splits": "splits", "last": "last", "oracle": "oracle",
           "last_mean_class": "last, mean per class", "last_per_seed": "last per seed", "published": "published",
           "command": "command"}
FOOTNOTE = (f"{DAGGER} transcribed from an earlier report of these runs, whose run files were lost (the values "
            "as reported there, rounded); a re-run replaces it.")


def row_label(row: dict, key: str) -> str:
    if key != "task":
        return str(row.get(key, ""))
    if "task_label" in row:
        return row["task_label"]
    return task_label(row["task"]) if "task" in row else f"mean of {len(row['tasks'])} tasks"


def render(table: dict) -> str:
    """The Markdown of one table (without its marks)."""
    cache: dict[str, list[dict]] = {}

    def records_of(folder: str | list[str] | None) -> list[dict]:
        if folder is None:
            return []
        if not isinstance(folder, str):  # several folders, e.g. records written under an older folder name
            return [r for f in folder for r in records_of(f)]
        if folder not in cache:
            cache[folder] = load_records(folder)
        return cache[folder]

    def recs_for(row: dict, task: str) -> list[dict]:
        return row_records(records_of(row.get("records", table.get("records"))), row, task)

    if table.get("layout") == "wide":
        return render_wide(table, recs_for)
    records = records_of(table.get("records"))
    decimals = table.get("decimals", 2)
    columns = table.get("columns", ["seeds", "last", "best", "oracle", "published"])
    unknown = sorted(set(columns) - set(COLUMNS))
    if unknown:
        raise ValueError(f"table {table['id']}: unknown columns {unknown}; known: {list(COLUMNS)}")
    labels = table.get("labels", ["method", "task"])
    headers = {**HEADERS, **table.get("headers", {})}
    rows_records = [[recs_for(row, t) for t in row.get("tasks") or [row["task"]]] for row in table["rows"]]
    all_records = records + [r for per_task in rows_records for recs in per_task for r in recs]
    header = [*labels, *(headers.get("best", best_header(all_records)) if c == "best" else headers[c] for c in columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    any_transcribed = False
    for row, per_task in zip(table["rows"], rows_records):
        recs = [r for task_recs in per_task for r in task_recs]
        any_transcribed |= is_transcribed(recs)
        cells = [row_label(row, k) for k in labels]
        for c in columns:
            if c in ("seeds", "splits"):
                cells.append(seeds_of(recs, c))
            elif c == "published":
                cells.append(str(row.get("published", "")))
            elif c == "command":
                cells.append(command_of(recs, row) if "task" in row or row.get("command") else "")
            elif c == "last_per_seed":
                cells.append(per_seed(recs) if "task" in row else "")
            elif "tasks" in row:
                cells.append(task_mean_cell(per_task, c, decimals))
            else:
                cells.append(cell(recs, c, decimals))
        lines.append("| " + " | ".join(cells) + " |")
    if any_transcribed:
        lines += ["", FOOTNOTE]
    return "\n".join(lines)


def render_wide(table: dict, recs_for) -> str:
    """One column per task (and the mean over them), one row per setting (or of published numbers)."""
    tasks = table["tasks"]
    decimals = table.get("decimals", 2)
    labels = table.get("labels", ["method"])
    task_labels = table.get("task_labels", {})
    mean = table.get("mean_column")
    header = [*labels, *(task_labels.get(t, task_label(t)) for t in tasks), *([mean] if mean else [])]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    any_transcribed = False
    for row in table["rows"]:
        cells = [str(row.get(k, "")) for k in labels]
        if "cells" in row:  # published numbers
            cells += [str(row["cells"].get(t, "")) for t in tasks] + ([str(row["cells"].get("mean", ""))] if mean else [])
        else:
            column = row.get("metric", table.get("metric", "last"))
            per_task = [recs_for(row, t) for t in tasks]
            any_transcribed |= any(is_transcribed(recs) for recs in per_task)
            cells += [cell(recs, column, decimals) for recs in per_task]
            if mean:
                cells.append(task_mean_cell(per_task, column, decimals))
        lines.append("| " + " | ".join(cells) + " |")
    if any_transcribed:
        lines += ["", FOOTNOTE]
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
