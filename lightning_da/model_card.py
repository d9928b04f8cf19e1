"""``model_card.md``, written into every run folder: what was trained, on what, how well, and how to use it.

The card gives the method and the paper it implements, the backbone and norm, the source and target
data and what the target accuracy is measured on, the numbers of the last and best checkpoints (with
the selection rule) and the oracle (labelled as such), the command that trained it, the versions,
and the commands that load, predict with and export the model. Every number comes from the run's
``results.json``.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig

from lightning_da.record import run_command, versions


def _pct(v: Any) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, float) else "n/a"


def citation(method_target: str) -> str:
    """The first paragraph of the method module's docstring (it names the paper), or ''."""
    try:
        doc = inspect.getmodule(get_class(method_target)).__doc__ or ""
    except Exception:  # noqa: BLE001 - a card without a citation rather than no card
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split())


def backbone_summary(cfg: DictConfig) -> str:
    b = cfg.get("backbone")
    if not b:
        return "none (the method builds its own parts from the data, e.g. one projector per domain)"
    name = b.get("name") or b.get("model_name") or str(b.get("_target_", "")).rsplit(".", 1)[-1]
    if "branch_t" in b:  # two-branch multi-modal network
        branches = [f"{br.get('input')}: {br.get('kind')} {br.get('model') or br.get('name') or ''}".strip()
                    for br in (b.branch_t, b.branch_v)]
        return f"two-branch network ({'; '.join(branches)})"
    pretrained = b.get("pretrained")
    weights = b.get("weights_path") or b.get("weights")
    if pretrained in (False, None) and not weights:
        init = "trained from scratch"
    else:
        init = f"pretrained ({weights or pretrained})"
    return f"{name}, {init}{', frozen' if b.get('freeze') else ''}"


def card(cfg: DictConfig, results: dict) -> str:
    method_target = str(cfg.method._target_)
    cite = citation(method_target)
    norm = (cfg.get("norm") or {}).get("kind") or "none (as built)"
    lines = [f"# {results['method']} on {results['task']}", "",
             f"- **Method**: {results['method']} (`{method_target}`)" + (f". {cite}" if cite else ""),
             f"- **Backbone**: {backbone_summary(cfg)}; **norm**: {norm}",
             f"- **Data**: `{cfg.data.get('_target_', '')}`, source -> target: {results['task']}"
             + (f"; split {results['split']}" if "split" in results else ""),
             f"- **Target accuracy measured on**: {results.get('target_eval') or 'the target evaluation split'}",
             "", "## Target accuracy", "",
             "| checkpoint | selection | accuracy | mean per class |", "|---|---|---|---|"]
    if "last" in results:
        last = results["last"]
        lines.append(f"| last | the weights after the last step ({os.path.basename(str(last.get('checkpoint')))}) | "
                     f"{_pct(last.get('test/target_acc'))} | {_pct(last.get('test/target_acc_mean_class'))} |")
    if "best" in results:
        b = results["best"]
        rule = (f"best {b['monitor']} ({cfg.get('monitor_mode', 'max')}) at epoch {b.get('epoch')}; "
                + ("ORACLE: selected with target labels" if b.get("oracle") else "selected without target labels"))
        lines.append(f"| best | {rule} | {_pct(b.get('test/target_acc'))} | {_pct(b.get('test/target_acc_mean_class'))} |")
    if "oracle" in results:
        o = results["oracle"]
        at = f"step {o['step']}" if o.get("step") is not None else f"epoch {o.get('epoch')}"
        lines.append(f"| oracle | best validation target accuracy ({at}); uses target labels, not a selection a user "
                     f"can make | {_pct(o.get('val/target_acc'))} | |")
    v = versions()
    lines += ["", "## Training", "",
              f"- command: `{run_command(cfg)}`",
              f"- seed {results['seed']}, {results['steps']} steps, {results['epochs']} epochs, precision "
              f"{results['precision']}, {results['world_size']} process(es), {results.get('wall_time_s', 0):.0f} s",
              f"- versions: lightning-da {v['lightning_da']}, torch {v['torch']}, lightning {v['lightning']}, "
              f"python {v['python']}",
              "", "## Use", "",
              "```bash",
              "python -m lightning_da.predict <this folder> <image folder | image list | feature file> --out predictions.csv",
              "python -m lightning_da.export <this folder> --format onnx --out model.onnx",
              "```",
              "",
              "In Python: `model = lightning_da.load_model(\"<this folder>\")` (see docs/using_the_model.md).", ""]
    return "\n".join(lines)


def write_model_card(cfg: DictConfig, results: dict, path: str | os.PathLike) -> str:
    """Write :func:`card` to ``path`` and return it."""
    text = card(cfg, results)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return text
