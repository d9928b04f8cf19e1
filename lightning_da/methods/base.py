"""The method contract: a thin base, the one-loss path, and the named optimisers of multi-step methods.

* :class:`DAMethod`, the base of every method: the feature path ``backbone -> bottleneck`` (the part
  the ``norm`` choice converts), evaluation and its metrics, optimisers and schedules from config,
  logging, GRL and extra-loss helpers. It builds no head: a method builds the parts it uses in its own
  ``__init__`` after ``super().__init__()`` and says how features become the prediction in
  :meth:`DAMethod.classify`. After the most-derived ``__init__`` returns, the base converts the
  feature path's norm layers and checks the result (:meth:`DAMethod.finish_build`).
* :class:`SingleStepMethod`, for methods with one loss per batch: it builds the linear classifier
  and owns the training step; the method writes only :meth:`SingleStepMethod.transfer_loss`, which
  receives the step's context (:class:`Step`: the batch, the inputs, features, logits, the
  source/target split, and the no-grad ``guidance`` a method computes before the forward).
* Multi-step methods (MCD, CGDM, ADDA, SHOT, M2CAN) set ``automatic_optimization = False``, declare
  their optimisers by name in :meth:`DAMethod.optimizer_groups` (:class:`OptimGroup`: the modules, and
  where they differ from the configured optimiser: another optimiser, another base lr, the epochs of
  their phase) and write ``training_step`` as "this loss updates these groups",
  :meth:`DAMethod.update`. The base builds the optimisers and schedules from config once (a
  ``total_steps`` schedule gets the length of its group's phase), validates the ``lr_mult`` and
  ``group_options`` names once, and steps each schedule once per batch in which its group stepped.
* :class:`Needs`, the one place a method declares what it needs from the data and the builder
  (``lightning_da.train.build`` reads :meth:`DAMethod.needs_for` of the method config before building,
  and the built method holds the same value as ``needs``): strong target views, class names, several
  sources, a domain split for domain-aware norms, whether it trains, whether it takes the configured
  backbone.

Training loss of the one-loss path, on a batch ``{"source": (x_s, y_s), "target": (x_t, idx)}``
forwarded as one ``[x_s; x_t]`` call inside :func:`lightning_da.norm.domain_split`:

    L = CE(z_s, y_s) + trade_off * L_transfer(step) + sum_k w_k * L_k(z_t)

where ``L_k`` are the configured extra terms (``extra_losses={entropy: 0.1}``).

Evaluation: validation and test loaders come from ``datamodule.eval_names`` (``target`` first,
then held-out source splits); each logs ``{stage}/{name}_acc`` (overall accuracy) and
``{stage}/{name}_acc_mean_class`` (mean per-class recall, the VisDA metric). Norm-specific work
around training (RN's gate clamp, AdaBN's re-estimation) is the norm group's
(:func:`lightning_da.norm.norm_callbacks`, returned by :meth:`DAMethod.configure_callbacks`).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Mapping

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_da.compat import batches_that_stepped
from lightning_da.data.batches import cat_inputs, input_len
from lightning_da.losses import ExtraLoss
from lightning_da.models.grl import GradientReversal
from lightning_da.models.heads import Bottleneck, Classifier
from lightning_da.norm import DomainSplitError, domain_aware_layers, domain_split, norm_callbacks
from lightning_da.optim import NORM_GATES, param_groups


@dataclasses.dataclass(frozen=True)
class Needs:
    """What a method needs, declared once as the class attribute ``needs``; a method whose needs
    depend on an option overrides :meth:`DAMethod.needs_for`, which the builder and the built method
    both read."""

    #: takes the configured backbone (False: builds its own parts from the data, e.g. HDA projectors)
    backbone: bool = True
    #: the constructor takes ``class_names`` from the data (CLIP prompts)
    class_names: bool = False
    #: reads ``batch["sources"]``, one batch per source domain
    multi_source: bool = False
    #: target batches come as ``((x_weak, x_strong), idx)``
    strong_view: bool = False
    #: forwards ``[source; target]`` in one call and declares the split (domain-aware norms need it)
    domain_split: bool = True
    #: False: nothing is trained, the model is evaluated as built
    trains: bool = True


@dataclasses.dataclass(frozen=True)
class OptimGroup:
    """One named optimiser of a multi-step method (:meth:`DAMethod.optimizer_groups`).

    modules: ``(name, module)`` pairs it updates; each is a parameter group with
        ``lr = base lr * lr_mult[name]`` and ``group_options[name]`` (``lightning_da.optim.param_groups``).
    param_groups: instead of ``modules``, ready torch parameter groups with their own learning rates
        (M2CAN's per-part rates); ``lr_mult`` does not apply to them.
    optimizer: a partial optimiser other than the configured ``optimizer`` (MCD's ``generator_optimizer``).
    lr: a base learning rate other than the optimiser's ``lr`` (ADDA's ``pretrain_lr``).
    epochs: ``(first, end)``, the epochs in which the group trains (``end`` None: to the end of the
        run); a schedule that takes ``total_steps`` runs over this phase only, and counts from its start
        because it steps only when the group does.
    """

    modules: list[tuple[str, nn.Module]] | None = None
    param_groups: list[dict] | None = None
    optimizer: Callable | None = None
    lr: float | None = None
    epochs: tuple[int, int | None] = (0, None)


@dataclasses.dataclass
class Step:
    """What one training step of a one-loss method has (:meth:`SingleStepMethod.transfer_loss` gets it).

    ``x_target`` is what the training forward takes for the target: the view(s) named by the
    method's ``train_views``, concatenated (``views`` holds every view: ``weak``, and ``strong`` for
    methods that ask for strong views). ``guidance`` is what :meth:`SingleStepMethod.guidance`
    computed without gradients before the forward (a teacher's or the weak view's predictions).
    ``features`` and ``logits`` are the forward's rows, ``n_source`` source rows first.
    """

    batch: dict
    x_source: Any
    y_source: torch.Tensor
    x_target: Any
    target_index: torch.Tensor | None
    views: dict[str, Any]
    n_source: int
    guidance: Any = None
    features: torch.Tensor | None = None
    logits: torch.Tensor | None = None

    # the forward's rows by domain (source rows first)
    source_logits = property(lambda self: self.logits[:self.n_source])
    target_logits = property(lambda self: self.logits[self.n_source:])
    source_features = property(lambda self: self.features[:self.n_source])
    target_features = property(lambda self: self.features[self.n_source:])


def configured_lr(factory: Callable) -> float | None:
    """The ``lr`` a partial optimiser was configured with (None when it has none)."""
    keywords = getattr(factory, "keywords", None)
    if keywords is None:
        raise TypeError(f"the optimizer config must build a partial optimiser (`_partial_: true`, e.g. "
                        f"conf/optimizer/sgd.yaml); got {factory!r}")
    return keywords.get("lr")


class _FinishAfterInit(type):
    """Metaclass of :class:`DAMethod`: runs ``finish_build()`` once the most-derived ``__init__`` returns."""

    def __call__(cls, *args, **kwargs):
        module = super().__call__(*args, **kwargs)
        module.finish_build()
        return module


class DAMethod(L.LightningModule, metaclass=_FinishAfterInit):
    """Shared base. Args:

    backbone: an ``nn.Module`` with ``out_features`` (``models.build_backbone``).
    num_classes: number of classes (from the DataModule).
    optimizer: a partial optimiser (``_partial_: true``) taking parameter groups.
    scheduler: a partial LR scheduler taking the optimiser (and ``total_steps`` if it asks for it).
    norm: a callable converting the feature path's norm layers (``norm`` group); None keeps BN.
    bottleneck: keyword arguments of :class:`~lightning_da.models.heads.Bottleneck` (``dim: 0`` = none).
    lr_mult: learning-rate multiplier per top-level module name (``backbone``, ``bottleneck``, ...).
    group_options: optimiser settings per top-level module name, over the optimiser's own
        (``{backbone: {momentum: 0.0}}``: TLlib's AFN keeps momentum off the backbone).
    extra_losses: extra terms on the target logits, ``{name: weight}`` (see ``losses.regularizers``).
    channels_last: keep the model and image batches in ``channels_last`` memory format (GPU convnets;
        None = false).
    compile: ``torch.compile`` the backbone in place when fitting starts (``nn.Module.compile``;
        checkpoints keep their usual keys; None = false).

    Any other keyword is refused by name. A method lists the options of these it ignores in
    ``unused_options``; passing one raises too.
    """

    needs: Needs = Needs()
    #: constructor arguments that are objects, not hyper-parameters (kept out of checkpoints)
    hparams_ignore: tuple[str, ...] = ()
    #: options of the base or of :class:`SingleStepMethod` this method has no use for (``bottleneck``,
    #: ``lr_mult``, ``group_options``, ``extra_losses``, ``channels_last``, ``compile``, ``trade_off``, ``classifier_init``):
    #: giving one is an error that names it, never a silent no-op.
    #: Without ``bottleneck`` the features are the backbone's own (an identity bottleneck).
    unused_options: tuple[str, ...] = ()

    def __init__(self, backbone: nn.Module, num_classes: int, optimizer: Callable, scheduler: Callable | None = None,
                 norm: Callable[[nn.Module], nn.Module] | None = None, bottleneck: dict | None = None,
                 lr_mult: dict | None = None, extra_losses: dict | None = None, channels_last: bool | None = None,
                 compile: bool | None = None, group_options: dict | None = None, **unknown):
        self.refuse_unused({"bottleneck": bottleneck, "lr_mult": lr_mult, "group_options": group_options,
                            "extra_losses": extra_losses,
                            "channels_last": channels_last, "compile": compile}, unknown)
        if "bottleneck" in self.unused_options:
            bottleneck = {"dim": 0}
        channels_last, compile = bool(channels_last), bool(compile)  # saved as the switches' values
        super().__init__()
        # unused options stay out of the checkpoint's hyper-parameters, so load_from_checkpoint does not pass them
        unused = [n for n in self.unused_options if n not in ("channels_last", "compile")]
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler", "norm", *self.hparams_ignore, *unused],
                                  logger=False)
        self.backbone = backbone
        self.bottleneck = Bottleneck(backbone.out_features, **(bottleneck or {}))
        self.num_classes = num_classes
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.lr_mult = dict(lr_mult or {})
        self.group_options = {k: dict(v) for k, v in (group_options or {}).items()}
        self.extra = ExtraLoss(extra_losses)
        self.eval_metrics = nn.ModuleDict()
        self._norm = norm

    def refuse_unused(self, given: dict[str, Any], unknown: dict[str, Any] | None = None) -> None:
        """Raise, naming them, for the ``unknown`` options and those of ``given`` that the method lists
        in ``unused_options`` (switches count as given when on, the others when set at all)."""
        refused = sorted(unknown or {}) + [
            name for name, value in given.items()
            if name in self.unused_options and (value if name in ("channels_last", "compile") else value is not None)]
        if refused:
            raise ValueError(f"{type(self).__name__} does not use the option(s) {refused}: remove "
                             f"{', '.join('method.' + n for n in refused)} from the method config")

    @classmethod
    def needs_for(cls, options: Mapping[str, Any]) -> Needs:
        """What the method needs when built with the constructor ``options`` (the method config): the
        class's ``needs`` unless one of its options changes them."""
        return cls.needs

    def finish_build(self) -> None:
        """After every part is built: settle ``needs`` for the options given, convert the feature
        path's norm layers (``norm``), then refuse a domain-aware norm when the method cannot split
        its batches by domain."""
        needs = type(self).needs_for(self.hparams)
        if "needs" in self.__dict__ and self.__dict__["needs"] != needs:
            raise TypeError(f"{type(self).__name__} changed self.needs in __init__; declare a need that depends on "
                            "an option in the class method needs_for(options), which the builder reads too")
        self.needs = needs
        norm, self._norm = self._norm, None
        if norm is not None:
            for name in self.norm_modules():
                setattr(self, name, norm(getattr(self, name)))
        if domain_aware_layers(self) and not self.needs.domain_split:
            raise DomainSplitError(self.domain_split_refusal())

    def domain_split_refusal(self) -> str:
        """The error for a domain-aware norm on a method that cannot give the domain split."""
        return (f"{type(self).__name__} cannot split its batches by domain, so it cannot use a domain-aware norm "
                "(dsbn/transnorm/rn); use norm=bn or adabn")

    # ------------------------------------------------------------------ model
    def norm_modules(self) -> list[str]:
        """Names of the modules whose BatchNorm layers the ``norm`` choice replaces: the feature path
        that :meth:`features_domains` runs inside the domain split (not heads or discriminators)."""
        return ["backbone", "bottleneck"]

    def in_memory_format(self, x: Any) -> Any:
        """``x`` in the model's memory format: image batches in ``channels_last`` when it is on."""
        if self.hparams.channels_last and isinstance(x, torch.Tensor) and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.backbone(self.in_memory_format(x)))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """The evaluation logits of ``features`` (every method says how it predicts)."""
        raise NotImplementedError(f"{type(self).__name__} must define classify(features) -> logits")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))

    def predict_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and the evaluation logits of ``x`` in one pass (validators, visuals, pseudo labels)."""
        f = self.features(x)
        return f, self.classify(f)

    def features_domains(self, *xs: torch.Tensor) -> torch.Tensor:
        """Features of ``cat(xs)`` (source first, target last) in one call, telling domain-aware
        norms that the rows before the last tensor are source."""
        x = cat_inputs(xs)  # tensors, or dicts of inputs (multi-modal data)
        with domain_split(self, sum(input_len(t) for t in xs[:-1])):
            return self.features(x)

    def forward_domains(self, *xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features and logits of ``cat(xs)``, forwarded as :meth:`features_domains`."""
        f = self.features_domains(*xs)
        return f, self.classify(f)

    def configure_callbacks(self):
        """The norm group's callbacks for this model's layers (RN gate clamp, AdaBN); methods add theirs."""
        return norm_callbacks(self)

    # ------------------------------------------------------------------ training
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
        batches = batches_that_stepped(trainer, self.global_step)
        return (batches + 1) % max(trainer.log_every_n_steps, 1) == 0

    def log_train(self, metrics: dict) -> None:
        """Log training scalars (``stage/name``); ``train/loss`` also goes to the progress bar."""
        self.log_dict(metrics)
        if "train/loss" in metrics:
            self.log("loss", metrics["train/loss"], prog_bar=True, logger=False)

    def with_extra_losses(self, loss: torch.Tensor, logs: dict | None, *target_logits: torch.Tensor) -> torch.Tensor:
        """``loss`` plus the configured ``extra_losses`` on each of ``target_logits`` in turn (e.g. both
        heads of a bi-classifier); ``loss`` itself when none are configured. With ``logs``, each term's
        value (summed over the tensors) is logged there as ``train/loss_<name>``."""
        if not self.extra:
            return loss
        logged: dict[str, torch.Tensor] = {}
        for z in target_logits:
            total, terms = self.extra(z)
            loss = loss + total
            for k, v in terms.items():
                logged[k] = logged[k] + v.detach() if k in logged else v.detach()
        if logs is not None:
            logs.update({f"train/loss_{k}": v for k, v in logged.items()})
        return loss

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

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Manual optimisation: each schedule steps once for a batch in which its group stepped."""
        stepped, self._stepped_groups = getattr(self, "_stepped_groups", []), []
        for name in stepped:
            scheduler = self._group_schedulers.get(name)
            if scheduler is not None:
                scheduler.step()

    def _hook_optimizer_steps(self) -> None:
        """Run :meth:`after_optimizer_step` after every optimiser step, automatic or manual: one
        post-step hook per optimiser (registered once, so resumed or repeated fits do not stack them)."""
        for opt in self.trainer.optimizers:
            if not getattr(opt, "_da_post_step_hook", False):
                opt.register_step_post_hook(lambda *_: self.after_optimizer_step())
                opt._da_post_step_hook = True

    def after_optimizer_step(self) -> None:
        """Constraints a method re-imposes after each optimiser step, before the scheduler steps
        (CMKD's RST reset). RN's gate clamp is the norm group's and runs first."""

    # ------------------------------------------------------------------ evaluation
    def _eval_names(self) -> list[str]:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        return dm.eval_names if dm is not None and hasattr(dm, "eval_names") else ["target"]

    def setup(self, stage: str) -> None:
        """Memory format, compilation, and metrics per stage and evaluation loader (before DDP wraps
        the module)."""
        dm = getattr(self.trainer, "datamodule", None)
        if (stage == "fit" and getattr(dm, "multi_source", False) and not self.needs.multi_source
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
        """The modules the optimiser updates, by name (one-loss methods: every child but the metrics)."""
        return [(n, m) for n, m in self.named_children() if n != "eval_metrics"]

    def optimizer_groups(self) -> dict[str, OptimGroup]:
        """The method's optimisers by name. One-loss methods: one, ``main``, over :meth:`optimizer_modules`.
        A multi-step method declares its own (e.g. MCD: ``{"G": backbone + bottleneck, "F": both heads}``)."""
        return {"main": OptimGroup(self.optimizer_modules())}

    def _check_group_names(self, groups: dict[str, OptimGroup]) -> None:
        names = [n for g in groups.values() for n, _ in (g.modules or [])]
        for what, given in (("lr_mult", self.lr_mult), ("group_options", self.group_options)):
            unknown = sorted(set(given) - set(names) - {NORM_GATES})
            if unknown:
                raise ValueError(f"{what} names unknown modules {unknown}; {type(self).__name__} optimises {names}")

    def build_optimizer(self, group: OptimGroup) -> torch.optim.Optimizer:
        """The optimiser of one group: its parameter groups at its base lr, ``lr_mult`` and
        ``group_options`` by module name."""
        factory = group.optimizer or self.optimizer_factory
        if group.param_groups is not None:
            return factory(group.param_groups)
        lr = group.lr if group.lr is not None else configured_lr(factory)
        if lr is None:
            lr = configured_lr(self.optimizer_factory)
        if lr is None:
            raise ValueError(f"{type(self).__name__}: the optimizer config has no lr (set optimizer.lr)")
        names = {n for n, _ in group.modules} | {NORM_GATES}
        mults = {k: v for k, v in self.lr_mult.items() if k in names}
        options = {k: v for k, v in self.group_options.items() if k in names}
        return factory(param_groups(group.modules, lr, mults, options), lr=lr)

    def configure_optimizers(self):
        """The declared groups' optimisers and, with a ``scheduler``, one schedule each. Automatic
        optimisation (one group): Lightning steps the schedule every step; manual: the base does,
        once per batch in which the group stepped (:meth:`update`)."""
        groups = self.optimizer_groups()
        self._check_group_names(groups)
        optimizers = {name: self.build_optimizer(g) for name, g in groups.items()}
        schedulers = ({name: self.make_scheduler(opt, groups[name]) for name, opt in optimizers.items()}
                      if self.scheduler_factory is not None else {})
        self._group_names = list(groups)
        self._built_optimizers, self._group_schedulers = optimizers, schedulers
        if self.automatic_optimization:
            if len(groups) != 1:
                raise TypeError(f"{type(self).__name__} declares {len(groups)} optimisers; set "
                                "automatic_optimization = False and step them with self.update(loss, names)")
            (name, optimizer), = optimizers.items()
            if not schedulers:
                return optimizer
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedulers[name], "interval": "step"}}
        return (list(optimizers.values()), list(schedulers.values())) if schedulers else list(optimizers.values())

    def optimizer_for(self, name: str):
        """The optimiser of group ``name`` (Lightning's wrapper inside a Trainer: precision and strategy
        apply; the built optimiser outside one)."""
        if name not in getattr(self, "_group_names", ()):
            raise KeyError(f"{type(self).__name__} has no optimiser group {name!r}; it declares "
                           f"{list(getattr(self, '_group_names', []))} (after configure_optimizers)")
        if self._trainer is None:
            return self._built_optimizers[name]
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        return optimizers[self._group_names.index(name)]

    def zero_grad_groups(self, *names: str) -> None:
        for name in names:
            self.optimizer_for(name).zero_grad()

    def step_groups(self, *names: str) -> None:
        """Step the named optimisers in order; their schedules step once at the end of the batch."""
        stepped = self.__dict__.setdefault("_stepped_groups", [])
        for name in names:
            self.optimizer_for(name).step()
            if name not in stepped:
                stepped.append(name)

    def update(self, loss: torch.Tensor, *names: str) -> None:
        """``loss`` updates these groups: zero their gradients, back-propagate ``loss`` and step
        them (in the order named); their schedules step once at the end of the batch."""
        self.zero_grad_groups(*names)
        self.manual_backward(loss)
        self.step_groups(*names)

    def schedule_length(self, group: OptimGroup | None = None) -> int:
        """Steps of the run (or of ``group``'s phase) for a schedule that runs over ``total_steps``."""
        total = self.total_steps("the learning-rate schedule")
        first, end = group.epochs if group is not None else (0, None)
        if first == 0 and end is None:
            return total
        per_epoch = int(self.trainer.num_training_batches)
        start = min(first * per_epoch, total)
        stop = total if end is None else min(end * per_epoch, total)
        return max(stop - start, 1)

    def make_scheduler(self, optimizer: torch.optim.Optimizer, group: OptimGroup | None = None):
        """The configured schedule for ``optimizer`` (given the length of the run, or of ``group``'s
        phase, if it asks for ``total_steps``)."""
        kwargs = {}
        if "total_steps" in inspect.signature(self.scheduler_factory).parameters and "total_steps" not in self.scheduler_factory.keywords:
            kwargs["total_steps"] = self.schedule_length(group)
        return self.scheduler_factory(optimizer, **kwargs)


class SingleStepMethod(DAMethod):
    """A method with one loss per batch: a linear classifier on the features, and
    ``L = CE(z_s, y_s) + trade_off * transfer_loss + extra_losses`` in one optimiser step. Args
    (besides :class:`DAMethod`'s):

    trade_off: weight of the method's transfer loss (None = 1).
    classifier_init: initialisation of the classifier (``default``, ``xavier``, ``normal``; None = default).

    A subclass builds its own parts in ``__init__`` after ``super().__init__()`` and writes only
    :meth:`transfer_loss`, which gets the step's :class:`Step`. What the step forwards is declared:
    ``train_views`` (which target view(s) the one ``[x_s; x_t]`` forward takes) and :meth:`guidance`
    (no-grad predictions made before that forward, e.g. FixMatch's weak-view probabilities or a mean
    teacher's); a subclass may override :meth:`forward_domains` (what the forward computes). A
    subclass whose classifier is not one linear layer sets ``linear_classifier = False``, builds
    ``self.classifier`` itself and lists ``classifier_init`` in ``unused_options``.
    """

    #: build the linear classifier ``Linear(features, num_classes)`` (False: the subclass builds its own)
    linear_classifier: bool = True
    #: the target view(s) the training forward takes, concatenated in this order: ``"weak"`` (the
    #: target batch itself when the data gives one view) and ``"strong"`` (with ``Needs(strong_view=True)``)
    train_views: tuple[str, ...] = ("weak",)

    def __init__(self, *args, trade_off: float | None = None, classifier_init: str | None = None, **kwargs):
        self.refuse_unused({"trade_off": trade_off, "classifier_init": classifier_init})
        super().__init__(*args, **kwargs)
        if self.linear_classifier:
            self.classifier = Classifier(self.bottleneck.out_features, self.num_classes, init=classifier_init or "default")
        self.trade_off = 1.0 if trade_off is None else trade_off

    def finish_build(self) -> None:
        super().finish_build()
        if "strong" in self.train_views and not self.needs.strong_view:
            raise TypeError(f"{type(self).__name__} trains on the strong target view but does not declare "
                            "Needs(strong_view=True)")

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def make_step(self, batch: dict) -> Step:
        """The step's inputs: source ``(x, y)``, the target views and the target input of the forward."""
        (xs, ys), (xt, idx) = batch["source"], batch["target"]
        views = {"weak": xt[0], "strong": xt[1]} if self.needs.strong_view else {"weak": xt}
        x_target = cat_inputs([views[v] for v in self.train_views])
        return Step(batch=batch, x_source=xs, y_source=ys, x_target=x_target, target_index=idx, views=views,
                    n_source=input_len(xs))

    def guidance(self, step: Step) -> Any:
        """What the loss learns from, computed without gradients before the training forward (None: nothing)."""
        return None

    def transfer_loss(self, step: Step) -> tuple[torch.Tensor, dict]:
        """The method's adaptation loss for the step (and extra scalars to log)."""
        raise NotImplementedError

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        step = self.make_step(batch)
        with torch.no_grad():
            step.guidance = self.guidance(step)
        step.features, step.logits = self.forward_domains(step.x_source, step.x_target)
        ys = step.y_source
        loss_cls = F.cross_entropy(step.source_logits, ys)
        loss_transfer, logs = self.transfer_loss(step)
        loss = self.with_extra_losses(loss_cls + self.trade_off * loss_transfer, logs, step.target_logits)
        if self.logging_step():
            with torch.no_grad():
                source_acc = (step.source_logits.argmax(1) == ys).float().mean()
            self.log_train({"train/loss": loss, "train/loss_cls": loss_cls, "train/loss_transfer": loss_transfer,
                            "train/source_acc": source_acc, **logs})
        return loss
