"""Checks of a composed run before anything trains (``lightning_da.train.build`` calls them): the
method fits the data's setting, the features fit the backbone, the run has a length, and what
``monitor=auto`` means for this data. Each error names the setting to change.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

log = logging.getLogger(__name__)
HDA_METHODS = "method=ssan, hda_net or target_only"
AUTO_MONITOR = "val/source_acc"


def is_hda_data(datamodule) -> bool:
    """True for the semi-supervised heterogeneous setting (full batches with labelled target samples)."""
    return hasattr(datamodule, "labeled_index")


def _is_feature_files(cfg: DictConfig) -> bool:
    return str((cfg.get("data") or {}).get("_target_", "")).endswith("feature_files")


def check_setting(cfg: DictConfig, datamodule, method_cls, needs) -> None:
    """Refuse a method of another setting than the data's: a UDA method on semi-supervised
    heterogeneous data (``data=features`` by default), or an HDA method on unsupervised data."""
    name, features = method_cls.__name__, _is_feature_files(cfg)
    if is_hda_data(datamodule) and needs.backbone:
        if features:
            what = (f"data=features defaults to the semi-supervised heterogeneous setting (data.labeled_per_class="
                    f"{datamodule.labeled_per_class} labelled target samples per class, source and target of any widths)")
            uda = ("; for unsupervised DA with any UDA method on feature files of one width, set "
                   "data.labeled_per_class=null")
        else:
            what, uda = f"this data ({type(datamodule).__name__}) is the semi-supervised heterogeneous setting", ""
        raise ValueError(f"{name} is an unsupervised DA method, but {what}, which needs a heterogeneous DA method: "
                         f"{HDA_METHODS}{uda}")
    if not is_hda_data(datamodule) and not needs.backbone:
        how = " (data=features: data.labeled_per_class=3, the default)" if features else ""
        raise ValueError(f"{name} is a semi-supervised heterogeneous DA method: it needs feature data with labelled target "
                         f"samples per class{how}; for unsupervised DA pick a UDA method (method=dann, source_only, ...)")


def feature_width(backbone_cfg: DictConfig, datamodule) -> int:
    """The input width a feature backbone (one with ``in_features``) gets from the data. Raises when
    the data gives images, or when the features' widths differ (that needs the heterogeneous
    setting, not another ``in_features``)."""
    dims = getattr(datamodule, "input_dims", None) or {}
    if not dims:
        raise ValueError(f"backbone={backbone_cfg.get('name', '')} takes feature vectors, but this data gives images: use "
                         "an image backbone (backbone=lenet, resnet50, ...)")
    widths = sorted(set(dims.values()))
    if len(widths) != 1:
        raise ValueError(f"the domains' features have different widths {dims}: unsupervised DA needs one feature space. "
                         f"Features of different widths need the heterogeneous setting: an HDA method ({HDA_METHODS}) "
                         "with labelled target samples (data=features: data.labeled_per_class=3, the default)")
    return widths[0]


def check_image_backbone(name: str, datamodule) -> None:
    """Refuse feature data under an image backbone (called once the images are fitted to it, as
    reading the data builds the domains)."""
    dims = getattr(datamodule, "input_dims", None) or {}
    if dims:
        raise ValueError(f"this data gives feature vectors ({dims}), but backbone={name} takes images: use backbone=mlp")


def check_run_length(cfg: DictConfig, datamodule, needs) -> None:
    """Refuse a training run of no steps (it would report an untrained model as its result); warn when
    ``trainer.max_steps`` asks for more steps than ``trainer.max_epochs`` epochs hold (the earlier wins)."""
    trainer = cfg.trainer
    max_steps, max_epochs = trainer.get("max_steps", -1), trainer.get("max_epochs")
    if not needs.trains:
        return
    for key, value in (("max_steps", max_steps), ("max_epochs", max_epochs)):
        if value == 0:
            raise ValueError(f"trainer.{key}=0 trains nothing, and the run would report an untrained model's accuracy as "
                             "its result: set a positive run length (trainer.max_epochs=N epochs of a fixed number of "
                             "steps each, or trainer.max_steps=N with trainer.max_epochs=-1)")
    per_epoch = getattr(datamodule, "iters_per_epoch", None) or getattr(datamodule, "steps_per_epoch", None)
    if per_epoch and max_steps and max_steps > 0 and max_epochs and max_epochs > 0 and max_steps > max_epochs * per_epoch:
        log.warning("trainer.max_steps=%d is more than trainer.max_epochs=%d epochs of %d steps: the run stops after %d "
                    "steps (the earlier limit); set trainer.max_epochs=-1 to run %d steps", max_steps, max_epochs,
                    per_epoch, max_epochs * per_epoch, max_steps)


def resolve_monitor(cfg: DictConfig, datamodule) -> None:
    """``monitor: auto`` (``data=features``): ``val/source_acc`` where the data holds out source
    samples (unsupervised DA), else null (the last checkpoint; the HDA setting)."""
    if cfg.get("monitor") == "auto":
        cfg.monitor = AUTO_MONITOR if "source" in datamodule.eval_names else None
