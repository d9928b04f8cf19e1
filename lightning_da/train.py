"""Build data, method, trainer, loggers and callbacks from a composed config; fit; test; report.

``run.py`` is the Hydra entry point around :func:`train`. The report tests two checkpoints: the
last one and the best by ``cfg.monitor`` (when set), and adds the oracle best (the validation
epoch with the highest target accuracy, which uses target labels and is labelled so).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import resource
import time
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from lightning_da.callbacks import (FiniteLossCheck, InterruptCheckpoint, MetricHistory, ProgressLine, RNGStateCheckpoint,
                                   RunSignature, StepwiseTargetAccuracy)
from lightning_da.callbacks.run_signature import check_resume, resume_error, run_signature
from lightning_da.model_card import write_model_card
from lightning_da.record import ModelRecord
from lightning_da.run_checks import (check_image_backbone, check_run_length, check_setting, feature_width, is_hda_data,
                                     resolve_monitor)
from lightning_da.validators import VALIDATORS, ValidatorScores

log = logging.getLogger(__name__)
ORACLE_METRIC = "val/target_acc"


CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


def compose_config(overrides: list[str], output_dir: str | os.PathLike, config_dir: str = CONF_DIR) -> DictConfig:
    """Compose ``conf/train.yaml`` with ``overrides`` as ``run.py`` would, outside a Hydra app
    (scripts, tests), with the run's outputs in ``output_dir``; ``train(cfg)`` can then run it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def build_backbone(cfg: DictConfig, datamodule, method_cls, needs) -> tuple[torch.nn.Module | None, DictConfig | None]:
    """The configured backbone and its config as built, fitted to the data: none for methods that
    build their own (HDA projectors; an explicit ``backbone=`` override is refused), ``in_features:
    null`` filled from the data's feature width (:func:`~lightning_da.run_checks.feature_width`), and
    the images shaped to the backbone's ``input_spec``."""
    backbone_cfg = cfg.get("backbone")
    if backbone_cfg and not needs.backbone:
        overrides = list(cfg.get("hydra", {}).get("overrides", {}).get("task", []))
        if any(o.split("=")[0].lstrip("+~") == "backbone" for o in overrides):
            raise ValueError(f"{method_cls.__name__} builds one projector per domain from the data and takes no "
                             "backbone: drop the backbone=... override")
        log.info("%s builds per-domain projectors: the default backbone (%s) is not built", method_cls.__name__,
                 backbone_cfg.get("name"))
        backbone_cfg = None
    takes_features = bool(backbone_cfg) and "in_features" in backbone_cfg
    if takes_features and backbone_cfg.in_features is None:
        backbone_cfg = OmegaConf.merge(backbone_cfg, {"in_features": feature_width(backbone_cfg, datamodule)})
    backbone = instantiate(backbone_cfg) if backbone_cfg else None
    if backbone is not None and hasattr(datamodule, "fit_inputs_to"):  # images shaped to the backbone's input
        datamodule.fit_inputs_to(getattr(backbone, "input_spec", None), f"backbone {cfg.backbone.get('name', '')}".strip())
    if backbone is not None and not takes_features:
        check_image_backbone(backbone_cfg.get("name", ""), datamodule)
    return backbone, backbone_cfg


def build_method(cfg: DictConfig, backbone: torch.nn.Module | None, num_classes: int, data_kwargs: dict) -> L.LightningModule:
    """The configured method around ``backbone`` (norm inside), with what it takes from the data
    (``data_kwargs``: HDA input widths, CLIP class names); ``lightning_da.load`` rebuilds with it too."""
    return instantiate(
        cfg.method,
        backbone=backbone,
        num_classes=num_classes,
        **data_kwargs,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        norm=instantiate(cfg.norm) if cfg.get("norm") else None,
        _convert_="all",
    )


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate the DataModule, the method (backbone and norm inside) and the trainer."""
    datamodule = instantiate(cfg.data, _convert_="all")
    method_cls = get_class(cfg.method._target_)
    # what the method needs under these options: read once here; the built method holds the same
    needs = method_cls.needs_for(OmegaConf.to_container(cfg.method, resolve=True))
    check_setting(cfg, datamodule, method_cls, needs)
    check_run_length(cfg, datamodule, needs)
    backbone, backbone_cfg = build_backbone(cfg, datamodule, method_cls, needs)
    num_classes = datamodule.num_classes  # builds the domains and checks their class lists
    # what a method needs from the data beyond the class count (HDA: the per-domain input dims)
    data_kwargs = dict(getattr(datamodule, "model_kwargs", {}))
    if needs.class_names:
        data_kwargs["class_names"] = list(datamodule.classes)  # CLIP methods build prompts from them
    model = build_method(cfg, backbone, num_classes, data_kwargs)
    if needs.strong_view:  # FixMatch-style methods read (weak, strong) target views
        if not hasattr(datamodule, "strong_target_view"):
            raise ValueError(f"{type(model).__name__} needs weak and strong target views, which {type(datamodule).__name__} cannot give")
        datamodule.strong_target_view = True
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    if not cfg.trainer.get("enable_progress_bar", True):  # a log line every tenth of the run instead
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)] + [ProgressLine()]
    if hasattr(datamodule, "labeled_index"):  # full-batch HDA: one batch, no per-sample target loader
        dropped = [type(c).__name__ for c in callbacks if type(c).__name__ in ("ValidatorScores", "EmbeddingVisuals")]
        if dropped:
            log.info("full-batch HDA data has no per-sample target loader: %s skipped (the oracle best step and "
                     "the last step are reported instead)", ", ".join(dropped))
            callbacks = [c for c in callbacks if type(c).__name__ not in dropped]
    # every checkpoint carries what lightning_da.load_model needs to use the model without this run
    callbacks += [MetricHistory(), RNGStateCheckpoint(), FiniteLossCheck(), RunSignature(run_signature(cfg, model, datamodule)),
                  ModelRecord(cfg, backbone, backbone_cfg, data_kwargs)]
    resolve_monitor(cfg, datamodule)
    monitor = cfg.get("monitor")
    split = re.fullmatch(r"val/(\w+?)_acc(_mean_class)?", monitor or "")
    if split and split.group(1) not in datamodule.eval_names:
        available = [f"val/{n}_acc" for n in datamodule.eval_names]
        fix = ("the semi-supervised heterogeneous setting holds out no source data: use" if is_hda_data(datamodule)
               else "hold out source data with data.source_holdout=0.1, pick another monitor, or")
        raise ValueError(f"monitor={monitor} needs an evaluation split named {split.group(1)!r}, but this data evaluates "
                         f"{datamodule.eval_names} (monitors {available}); {fix} monitor=null to report the last "
                         "checkpoint only")
    if monitor and monitor.startswith("val/validator/"):
        name = monitor.removeprefix("val/validator/")
        scorers = [c for c in callbacks if isinstance(c, ValidatorScores)]
        enabled = [v.name for c in scorers for v in c.validators]
        if name not in enabled:
            raise ValueError(f"monitor={monitor}, but validator {name!r} is not computed (callbacks.validators.names: "
                             f"{enabled}); available validators: {sorted(VALIDATORS)}")
        if any(k.startswith("source_") for k in VALIDATORS[name].needs) and "source" not in datamodule.eval_names:
            raise ValueError(f"monitor={monitor} needs a held-out source split: set data.source_holdout=0.1")
    stop = cfg.get("early_stopping") or {}
    if stop.get("patience") is not None:
        if not monitor:
            raise ValueError("early_stopping.patience is set but monitor=null: name the metric to stop on (e.g. monitor=val/validator/snd)")
        callbacks.append(EarlyStopping(monitor=monitor, mode=cfg.monitor_mode, patience=stop.patience, min_delta=stop.get("min_delta", 0.0)))
    ckpt_dir = os.path.join(cfg.paths.output_dir, "checkpoints")
    callbacks.append(InterruptCheckpoint(ckpt_dir, list(cfg.get("hydra", {}).get("overrides", {}).get("task", [])),
                                         cfg.paths.output_dir))
    if monitor:  # first, so that trainer.checkpoint_callback is the best-by-monitor one
        callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, monitor=monitor, mode=cfg.monitor_mode, save_top_k=1,
                                         filename="best-epoch{epoch:03d}", auto_insert_metric_name=False))
    # last.ckpt after every epoch, for resuming (Lightning's save_last only follows top-k saves)
    callbacks.append(ModelCheckpoint(dirpath=ckpt_dir, filename="last", save_top_k=1, enable_version_counter=False))
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    if not loggers:  # logger=none: Lightning's LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    return datamodule, model, trainer


def _test(trainer: L.Trainer, model, datamodule, ckpt_path: str) -> dict[str, float]:
    metrics = trainer.test(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    out = {}
    for m in metrics:
        out.update({k: float(v) for k, v in m.items()})
    return out


def _flat(cfg: DictConfig) -> dict[str, Any]:
    out = {}

    def walk(node, prefix):
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(v, key + ".")
            else:
                out[key] = v if isinstance(v, (int, float, str, bool)) else str(v)

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def _single_log_stream() -> None:
    """Lightning adds console handlers of its own; under Hydra's logging (console + run-dir file)
    that prints every message twice. Route Lightning's messages through Hydra's handlers only."""
    if logging.getLogger().handlers:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lg = logging.getLogger(name)
            for h in list(lg.handlers):
                if type(h) is logging.StreamHandler:
                    lg.removeHandler(h)
            lg.propagate = True


def _not_an_advertisement(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("💡 Tip")


def _drop_lightning_advertisement() -> None:
    """Lightning's trainer logs a "💡 Tip" to install its cloud logger (LitLogger) on every run that
    does not use it; a run's log keeps to the run. Only those tips are dropped, so a real message that
    names LitLogger still shows. Idempotent (``addFilter`` ignores a filter it has)."""
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_an_advertisement)


def warn_renamed_experiment(cfg: DictConfig) -> str | None:
    """An experiment selected by its old name (``conf/experiment/<old>.yaml`` forwards to the new one for
    one more release) logs a warning naming the new name; returns the message."""
    renamed = cfg.get("renamed_experiment")
    if not renamed:
        return None
    message = (f"experiment={renamed.old} is deprecated and will be removed in the next release: "
               f"use experiment={renamed.new} (the same configuration)")
    log.warning(message)
    return message


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and test as configured; return the results (also written to ``results.json``)."""
    start = time.time()
    _single_log_stream()
    _drop_lightning_advertisement()
    warn_renamed_experiment(cfg)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    datamodule, model, trainer = build(cfg)
    trains = model.needs.trains
    if trains:
        ckpt_path = cfg.get("ckpt_path")
        signature = next(c for c in trainer.callbacks if isinstance(c, RunSignature)).signature
        if ckpt_path:
            check_resume(ckpt_path, signature)
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        except (RuntimeError, ValueError) as err:
            explained = resume_error(err, ckpt_path, signature) if ckpt_path else None
            if explained is None:
                raise
            raise explained from err
    else:
        log.info("%s trains nothing: evaluating the model as built", type(model).__name__)
    # snapshot now: testing a checkpoint restores callback states, the history included
    history = copy.deepcopy(next(c for c in trainer.callbacks if isinstance(c, MetricHistory)))
    stepwise = next((c.result() for c in trainer.callbacks if isinstance(c, StepwiseTargetAccuracy)), None)
    ckpt = trainer.checkpoint_callback

    results: dict[str, Any] = {
        "method": type(model).__name__, "task": f"{'+'.join(datamodule.source_names)}->{datamodule.target_name}",
        # None: the backbone as built (no conversion), or no backbone at all (HDA builds its own projectors)
        "norm": (cfg.get("norm") or {}).get("kind") if model.needs.backbone else None,
        "seed": cfg.seed, "world_size": trainer.world_size, "precision": str(trainer.precision),
        "epochs": trainer.current_epoch, "steps": trainer.global_step, "output_dir": cfg.paths.output_dir,
        "threads": torch.get_num_threads(),
    }
    if hasattr(datamodule, "labeled_index"):  # semi-supervised HDA: which labelled-target split
        results["split"] = int(datamodule.split)
    results["target_eval"] = getattr(datamodule, "target_eval_description", None)
    # the weights after the last step (last.ckpt is written at epoch ends, not after a max_steps stop)
    final = os.path.join(cfg.paths.output_dir, "checkpoints", "final.ckpt") if trains else None
    if trains:
        trainer.save_checkpoint(final)
    if cfg.get("test", True) or not trains:
        results["last"] = {"checkpoint": final, **_test(trainer, model, datamodule, final)}
        if cfg.get("monitor") and ckpt.monitor and ckpt.best_model_path:
            best = history.best(cfg.monitor, cfg.monitor_mode) or {}
            results["best"] = {"monitor": cfg.monitor, "oracle": cfg.monitor.startswith("val/target"),
                               "monitor_value": float(ckpt.best_model_score), "epoch": best.get("epoch"),
                               "checkpoint": ckpt.best_model_path,
                               **_test(trainer, model, datamodule, ckpt.best_model_path)}
    oracle = history.best(ORACLE_METRIC)
    if stepwise:  # full-batch methods: the best over every training step (finer than per epoch)
        oracle = results["oracle"] = {**stepwise, "epoch": None}
    elif oracle:
        results["oracle"] = {"note": "best validation epoch by target accuracy: uses target labels",
                             "epoch": oracle["epoch"], ORACLE_METRIC: oracle[ORACLE_METRIC]}
    results["history"] = history.history
    results["wall_time_s"] = round(time.time() - start, 2)
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    if trainer.is_global_zero:
        with open(os.path.join(cfg.paths.output_dir, "results.json"), "w") as fh:
            json.dump(results, fh, indent=2)
        write_model_card(cfg, results, os.path.join(cfg.paths.output_dir, "model_card.md"))
        for lg in trainer.loggers:
            if isinstance(lg, TensorBoardLogger):
                final_metrics = {f"hp/{part}/{k.split('/', 1)[1]}": v for part in ("last", "best")
                                 for k, v in results.get(part, {}).items() if k.startswith("test/")}
                if oracle:
                    final_metrics["hp/oracle/val_target_acc"] = oracle[ORACLE_METRIC]
                lg.log_hyperparams(_flat(cfg), metrics=final_metrics)
                lg.finalize("success")  # flush the event file now
        print(summary(results))
    return results


def _pct(v) -> str:
    return f"{100 * v:.2f}%" if isinstance(v, float) else "n/a"


def summary(results: dict) -> str:
    lines = [f"== {results['method']} on {results['task']} (seed {results['seed']}): {results['steps']} steps =="]
    if results.get("target_eval"):
        lines.append(f"evaluated on {results['target_eval']}")
    if "last" in results:
        lines.append(f"target accuracy, last checkpoint:              {_pct(results['last'].get('test/target_acc'))}"
                     f"  (mean per class {_pct(results['last'].get('test/target_acc_mean_class'))})")
    if "best" in results:
        b = results["best"]
        tag = " [ORACLE: selected with target labels]" if b["oracle"] else ""
        lines.append(f"target accuracy, best by {b['monitor']} (epoch {b['epoch']}): {_pct(b.get('test/target_acc'))}"
                     f"  (monitor {b['monitor_value']:.4f}){tag}")
    if "oracle" in results:
        o = results["oracle"]
        at = f"step {o['step']}" if o.get("step") is not None else f"epoch {o['epoch']}"
        lines.append(f"oracle (target labels): best val/target_acc {_pct(o[ORACLE_METRIC])} at {at}")
    lines.append(f"wall time {results['wall_time_s']:.1f} s, peak RSS {results['peak_rss_mb']:.0f} MB; "
                 f"results: {os.path.join(results['output_dir'], 'results.json')}")
    return "\n".join(lines)


def lookup(results: dict, dotted: str) -> float | None:
    """``lookup(results, "best.test/target_acc")`` -> the value, or None when absent."""
    node: Any = results
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) else None
