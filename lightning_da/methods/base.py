"""The base of every method: model parts, evaluation, metrics, optimiser and schedule from config.

A method is ``backbone -> bottleneck -> classifier`` plus whatever its loss needs. Subclasses with
one loss per batch override :meth:`DAMethod.transfer_loss` only; methods with several optimiser
steps per batch set ``automatic_optimization = False`` and override ``training_step``.

Training loss of the automatic path, on a batch ``{"source": (x_s, y_s), "target": (x_t, idx)}``
forwarded as one ``[x_s; x_t]`` call inside :func:`lightning_da.norm.domain_split`:

    L = CE(z_s, y_s) + trade_off * L_transfer(f, z) + sum_k w_k * L_k(z_t)

where ``L_k`` are the configured extra terms (``extra_losses={entropy: 0.1}``).

Evaluation: validation and test loaders come from ``datamodule.eval_names`` (``target`` first,
then held-out source splits); each logs ``{stage}/{name}_acc`` (overall accuracy) and
``{stage}/{name}_acc_mean_class`` (mean per-class recall, the VisDA metric).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_da.data.batches import cat_inputs, input_len
from lightning_da.losses import ExtraLoss
from lightning_da.models.grl import GradientReversal
from lightning_da.models.heads import Bottleneck, Classifier
from lightning_da.norm import (DomainSplitError, ReciprocalNorm, adabn_layers, adapt_batchnorm, clamp_norm_gates,
                               domain_aware_layers, domain_split)
from lightning_da.optim import param_groups


class DAMethod(L.LightningModule):
    """Shared base. Args:

    backbone: an ``nn.Module`` with ``out_features`` (``models.build_backbone``).
    num_classes: number of classes (from the DataModule).
    optimizer: a partial optimiser (``_partial_: true``) taking parameter groups.
    scheduler: a partial LR scheduler taking the optimiser (and ``total_steps`` if it asks for it).
    norm: a callable converting the built network's norm layers (``norm`` group); None keeps BN.
    bottleneck: keyword arguments of :class:`~lightning_da.models.heads.Bottleneck` (``dim: 0`` = none).
    classifier_init: initialisation of the classifier (``default``, ``xavier``, ``normal``; None = default).
    lr_mult: learning-rate multiplier per top-level module name (``backbone``, ``bottleneck``, ...).
    extra_losses: extra terms on the target logits, ``{name: weight}`` (see ``losses.regularizers``).
    trade_off: weight of the method's transfer loss (None = 1).

    A method lists the options of these it ignores in ``unused_options``; passing one raises.
    channels_last: keep the model and image batches in ``channels_last`` memory format (GPU convnets;
        None = false).
    compile: ``torch.compile`` the backbone in place when fitting starts (``nn.Module.compile``;
        checkpoints keep their usual keys; None = false).
    """

    #: the method forwards ``[source; target]`` in one call and declares the split to the norm layers
    splits_domains: bool = True
    #: the method's training step reads ``batch["sources"]`` (several source domains)
    supports_multi_source: bool = False
    #: constructor arguments that are objects, not hyper-parameters (kept out of checkpoints)
    hparams_ignore: tuple[str, ...] = ()
    #: base options this method has no use for (``bottleneck``, ``classifier_init``, ``lr_mult``,
    #: ``extra_losses``, ``trade_off``, ``channels_last``, ``compile``): giving one is an error that
    #: names it, never a silent no-op.
    #: Without ``bottleneck`` the features are the backbone's own (an identity bottleneck).
    unused_options: tuple[str, ...] = ()

    def __init__(self, backbone: nn.Module, num_classes: int, optimizer: Callable, scheduler: Callable | None = None,
                 norm: Callable[[nn.Module], nn.Module] | None = None, bottleneck: dict | None = None,
                 classifier_init: str | None = None, lr_mult: dict | None = None, extra_losses: dict | None = None,
                 trade_off: float | None = None, channels_last: bool | None = None, compile: bool | None = None):
        given = {"bottleneck": bottleneck, "classifier_init": classifier_init, "lr_mult": lr_mult,
                 "extra_losses": extra_losses, "trade_off": trade_off, "channels_last": channels_last, "compile": compile}
        # switches count as given when on (false is the no-op value); the others when set at all
        refused = [name for name in self.unused_options
                   if (given[name] if name in ("channels_last", "compile") else given[name] is not None)]
        if refused:
            raise ValueError(f"{type(self).__name__} does not use the option(s) {refused}: remove "
                             f"{', '.join('method.' + n for n in refused)} from the method config")
        if "bottleneck" in self.unused_options:
            bottleneck = {"dim": 0}
        classifier_init = classifier_init or "default"
        trade_off = 1.0 if trade_off is None else trade_off
        channels_last, compile = bool(channels_last), bool(compile)
        super().__init__()
        # unused options stay out of the checkpoint's hyper-parameters, so load_from_checkpoint does not pass them
        unused = [n for n in self.unused_options if n not in ("channels_last", "compile")]
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler", "norm", *self.hparams_ignore, *unused],
                                  logger=False)
        self.backbone = backbone
        self.bottleneck = Bottleneck(backbone.out_features, **(bottleneck or {}))
        self.classifier = Classifier(self.bottleneck.out_features, num_classes, init=classifier_init)
        self.build_heads()
        if norm is not None:
            for name in self.norm_modules():
                setattr(self, name, norm(getattr(self, name)))
        if domain_aware_layers(self) and not self.splits_domains:
            raise DomainSplitError(f"{type(self).__name__} cannot split its batches by domain, so it cannot use a "
                                   "domain-aware norm (dsbn/transnorm/rn); use norm=bn or adabn")
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.lr_mult = dict(lr_mult or {})
        self.extra = ExtraLoss(extra_losses)
        self.trade_off = trade_off
        self.eval_metrics = nn.ModuleDict()
        self.num_classes = num_classes

    # ------------------------------------------------------------------ model
    def build_heads(self) -> None:
        """Subclasses add their discriminators / extra heads here (norm conversion runs after)."""

    def norm_modules(self) -> list[str]:
        """Names of the modules whose BatchNorm layers the ``norm`` choice replaces: the feature path
        that :meth:`forward_domains` runs inside the domain split (not discriminators)."""
        return ["backbone", "bottleneck"]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last and isinstance(x, torch.Tensor) and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.bottleneck(self.backbone(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

    def predict_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and the evaluation logits of ``x`` in one pass (validators, visuals)."""
        f = self.features(x)
        return f, self.classifier(f)

    def features_domains(self, *xs: torch.Tensor) -> torch.Tensor:
        """Features of ``cat(xs)`` (source first, target last) in one call, telling domain-aware
        norms that the rows before the last tensor are source."""
        x = cat_inputs(xs)  # tensors, or dicts of inputs (multi-modal data)
        with domain_split(self, sum(input_len(t) for t in xs[:-1])):
            return self.features(x)

    def forward_domains(self, *xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and logits of ``cat(xs)``, forwarded as :meth:`features_domains`."""
        f = self.features_domains(*xs)
        return f, self.classifier(f)

    # ------------------------------------------------------------------ training
    def transfer_loss(self, features: torch.Tensor, logits: torch.Tensor, n_source: int) -> tuple[torch.Tensor, dict]:
        """The method's adaptation loss on ``[source; target]`` features and logits (and extra logs)."""
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        (xs, ys), (xt, _) = batch["source"], batch["target"]
        f, z = self.forward_domains(xs, xt)
        ns = input_len(xs)
        loss_cls = F.cross_entropy(z[:ns], ys)
        loss_transfer, logs = self.transfer_loss(f, z, ns)
        loss = loss_cls + self.trade_off * loss_transfer
        if self.extra:
            loss_extra, terms = self.extra(z[ns:])
            loss = loss + loss_extra
            logs.update({f"train/loss_{k}": v for k, v in terms.items()})
        if self.logging_step():
            with torch.no_grad():
                source_acc = (z[:ns].argmax(1) == ys).float().mean()
            self.log_train({"train/loss": loss, "train/loss_cls": loss_cls, "train/loss_transfer": loss_transfer,
                            "train/source_acc": source_acc, **logs})
        return loss

    def logging_step(self) -> bool:
        """True on the steps whose training scalars reach the loggers (every ``log_every_n_steps``).

        ``self.log`` costs about a millisecond per call on a CPU, so per-step values are only built
        and logged on these steps; nothing is lost, training scalars are logged per step only.
        Outside a Trainer nothing is logged.
        """
        trainer = self._trainer
        if trainer is None:  # called outside a Trainer (benchmarks, tests): nothing to log to
            return False
        # batches that stepped, as Lightning's logger counts them (global_step counts every
        # optimiser step, several per batch under manual optimisation)
        batches = getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", self.global_step)
        return (batches + 1) % max(trainer.log_every_n_steps, 1) == 0

    def log_train(self, metrics: dict) -> None:
        """Log training scalars (``stage/name``); ``train/loss`` also goes to the progress bar."""
        self.log_dict(metrics)
        if "train/loss" in metrics:
            self.log("loss", metrics["train/loss"], prog_bar=True, logger=False)

    def make_grl(self, alpha: float | None = 10.0, max_iters: int | None = None, lo: float = 0.0, hi: float = 1.0,
                 auto_step: bool = False) -> GradientReversal:
        """A GRL whose schedule runs over ``max_iters`` steps (None: the whole training run, the DANN
        progress schedule). Its step follows ``global_step`` unless ``auto_step``."""
        grl = GradientReversal(alpha=alpha, max_iters=max_iters or 1, lo=lo, hi=hi, auto_step=auto_step)
        grl.schedule_over_training = max_iters is None
        return grl

    def total_steps(self, what: str) -> int:
        steps = self.trainer.estimated_stepping_batches
        if steps == float("inf"):
            raise ValueError(f"{what} runs over the whole training, which has no length here: "
                             "set trainer.max_steps or trainer.max_epochs")
        return max(int(steps), 1)

    def on_train_start(self) -> None:
        self._hook_optimizer_steps()
        self._stepped_grls = [m for m in self.modules() if isinstance(m, GradientReversal) and not m.auto_step]
        for m in self._stepped_grls:
            if m.schedule_over_training:
                m.max_iters = self.total_steps("the GRL progress schedule (grl.max_iters: null)")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        for m in self._stepped_grls:
            m.step = self.global_step

    def _hook_optimizer_steps(self) -> None:
        """Run :meth:`after_optimizer_step` after every optimiser step, automatic or manual: one
        post-step hook per optimiser (registered once, so resumed or repeated fits do not stack them)."""
        self._has_gates = any(isinstance(m, ReciprocalNorm) for m in self.modules())
        for opt in self.trainer.optimizers:
            if not getattr(opt, "_da_post_step_hook", False):
                opt.register_step_post_hook(lambda *_: self.after_optimizer_step())
                opt._da_post_step_hook = True

    def after_optimizer_step(self) -> None:
        """Constraints re-imposed after each optimiser step (before the scheduler steps): RN's gates
        are clamped to [0.5, 1]. Methods with more (CMKD's RST reset) extend this."""
        if self._has_gates:
            clamp_norm_gates(self)

    # ------------------------------------------------------------------ evaluation
    def on_validation_epoch_start(self) -> None:
        self._adapt_batchnorm()

    def on_test_epoch_start(self) -> None:
        self._adapt_batchnorm()

    def _adapt_batchnorm(self) -> None:
        """``norm=adabn``: before each evaluation, re-estimate the BatchNorm statistics on the whole
        target train set (test-time transform, every rank the same data, so ranks agree)."""
        layers = adabn_layers(self)
        if not layers or self.trainer.sanity_checking:
            return
        dm = self.trainer.datamodule
        batches = (x.to(self.device) for x, _ in dm.target_pass_loader(eval_transform=True))
        adapt_batchnorm(self, self.features, batches, layers)

    def _eval_names(self) -> list[str]:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return dm.eval_names if dm is not None and hasattr(dm, "eval_names") else ["target"]

    def setup(self, stage: str) -> None:
        """Memory format, compilation, and metrics per stage and evaluation loader (before DDP wraps
        the module)."""
        dm = getattr(self.trainer, "datamodule", None)
        if (stage == "fit" and getattr(dm, "multi_source", False) and not self.supports_multi_source
                and not getattr(dm, "combine_sources", False)):
            raise ValueError(f"{type(self).__name__} trains on one source domain, but data.source lists "
                             f"{dm.source_names}; give one source, or data.combine_sources=true to train on "
                             "the sources combined into one")
        if self.hparams.channels_last:
            self.to(memory_format=torch.channels_last)
        if self.hparams.compile and stage == "fit" and not getattr(self, "_compiled", False):
            self.backbone.compile()
            self._compiled = True
        for st in ("val", "test"):
            for name in self._eval_names():
                if f"{st}_{name}" not in self.eval_metrics:
                    self.eval_metrics[f"{st}_{name}"] = nn.ModuleDict({
                        "acc": MulticlassAccuracy(self.num_classes, average="micro"),
                        "acc_mean_class": MulticlassAccuracy(self.num_classes, average="macro"),
                    })

    def _eval_step(self, stage: str, batch, dataloader_idx: int) -> None:
        x, y = batch
        name = self._eval_names()[dataloader_idx]
        logits = self(x)
        for metric_name, metric in self.eval_metrics[f"{stage}_{name}"].items():
            metric(logits, y)
            self.log(f"{stage}/{name}_{metric_name}", metric, add_dataloader_idx=False, prog_bar=(name == "target" and metric_name == "acc"))

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, dataloader_idx)

    # ------------------------------------------------------------------ optimisation
    def optimizer_modules(self) -> list[tuple[str, nn.Module]]:
        return list(self.named_children())

    def configure_optimizers(self):
        base_lr = self.optimizer_factory.keywords["lr"]
        modules = [(n, m) for n, m in self.optimizer_modules() if n != "eval_metrics"]
        optimizer = self.optimizer_factory(param_groups(modules, base_lr, self.lr_mult))
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.make_scheduler(optimizer), "interval": "step"}}

    def scheduler_list(self) -> list:
        """The configured LR schedulers as a list (manual optimisation steps them itself)."""
        schedulers = self.lr_schedulers()
        return schedulers if isinstance(schedulers, list) else [schedulers] if schedulers is not None else []

    def make_scheduler(self, optimizer: torch.optim.Optimizer):
        """The configured schedule for ``optimizer`` (given the run's length if it asks for ``total_steps``)."""
        kwargs = {}
        if "total_steps" in inspect.signature(self.scheduler_factory).parameters and "total_steps" not in self.scheduler_factory.keywords:
            kwargs["total_steps"] = self.total_steps("the learning-rate schedule")
        return self.scheduler_factory(optimizer, **kwargs)
