"""SHOT: source hypothesis transfer (Liang, Hu & Feng, ICML 2020, "Do We Really Need to Access the
Source Data? Source Hypothesis Transfer for Unsupervised Domain Adaptation"; code tim-learn/SHOT).

Source-free UDA in two phases, both in one run (one command reproduces a number):

1. **Source** (the first ``source_epochs`` epochs): backbone G, bottleneck B and the weight-normalised
   classifier C (:class:`~lightning_da.models.shot_heads.WeightNormClassifier`) learn the source with
   label-smoothed cross-entropy, on the source half of each batch only (the target half is not read):

       L_src = -mean_i sum_c q_ic log softmax(C(B(G(x_i))))_c,   q_i = (1 - smooth) onehot(y_i) + smooth / K

2. **Target** (the remaining epochs, source-free): the classifier C (the "hypothesis") is frozen,
   ``requires_grad`` off and left out of the target optimiser, so neither gradients nor weight decay
   nor momentum move it; G and B learn from the target half of each batch alone (the source half is
   never read) with :func:`~lightning_da.losses.shot.shot_target_loss`:

       L_tgt = ent_par * [mean_i H(p_i) - gent * H(mean_i p_i)] + cls_par * CE(z_t, y_hat)

   ``y_hat`` are clustering pseudo labels (:func:`~lightning_da.pseudo_labels.cluster_pseudo_labels`,
   SHOT's ``obtain_label``: weighted centroids over features with a 1 appended, cosine distance, one
   soft and ``rounds - 1`` hard rounds) of the whole target train set, in eval mode with the eval
   transform (SHOT passes its target loader with the target's training transform, which has no
   augmentation for digit targets, and ``image_test`` for object targets), stored per sample in a
   :class:`~lightning_da.pseudo_labels.PseudoLabelStore` (checkpointed). They are recomputed at the
   start of every target epoch and, with ``pseudo.interval``, every that many batches within an epoch
   (``"target_pass"``: once per pass over the target train set, ``ceil(N_t / (B_t * world))`` batches,
   SHOT's ``interval_iter = len(target loader)``). ``cls_par = 0`` (SHOT-IM) computes none.

Structure: a multi-step method on :class:`~lightning_da.methods.base.DAMethod` (not the one-loss
``SingleStepMethod`` path: its two phases forward one domain each and step different parameter sets),
one ``training_step`` branching on the phase, and two named optimiser groups built from ``optimizer``
(:meth:`optimizer_groups`): ``source`` over G + B + C for the source epochs and ``target`` over G + B
for the rest, so the target phase starts with fresh momentum buffers like SHOT's new optimiser, and
each with its own schedule, stepped only in its phase: a schedule that takes ``total_steps``
(``scheduler=dann``: ``lr_0 (1 + 10 p)^-0.75``, SHOT's ``lr_scheduler``) gets that phase's length,
so the decay restarts at the target phase as in SHOT.

Defaults are the SHOT digits script's (``digit/uda_digit.py``, ``digit.sh``): smooth 0.1, ent_par 1,
gent on, cls_par 0.1 (``digit.sh``; the argparse default is 0.3), two clustering rounds, a new pseudo
labelling every target pass; bottleneck ``Linear(., 256) -> BN -> Dropout(0.5)`` (no ReLU, xavier
init), set in ``conf/method/shot.yaml``.

Flags and deviations:

* SHOT's phase 2 starts from the phase-1 model with the best source test accuracy (checked 10 times
  in phase 1); here it starts from the last phase-1 weights.
* SHOT steps its schedule before the first update (the first step uses the decay of step 1, not 0).
* The DataModule still loads source batches in the target phase; they are not read (tested).
* Under DDP the target phase leaves C without gradients: use a strategy with
  ``find_unused_parameters=True``.
* ``source_epochs >= max_epochs`` gives SHOT's source-only model (a warning says so).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch
import torch.nn.functional as F

from lightning_da.losses.shot import shot_target_loss
from lightning_da.methods.base import DAMethod, Needs, OptimGroup
from lightning_da.models.shot_heads import WeightNormClassifier
from lightning_da.data.batches import target_indices
from lightning_da.pseudo_labels import PseudoLabelStore, cluster_dataset

log = logging.getLogger(__name__)


class SHOT(DAMethod):
    automatic_optimization = False
    #: each phase forwards one domain only, so there is no split to give a domain-aware norm
    needs = dataclasses.replace(Needs(), domain_split=False)
    #: the target phase is source-free with its own objective (SHOT weighs its terms by ent_par /
    #: cls_par; trade_off and classifier_init, SingleStepMethod's options, are refused as unknown)
    unused_options = ("extra_losses",)

    def __init__(self, *args, source_epochs: int, smooth: float = 0.1, ent_par: float = 1.0, gent: float = 1.0,
                 cls_par: float = 0.1, pseudo: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if source_epochs < 0:
            raise ValueError(f"source_epochs must be >= 0, got {source_epochs}")
        self.classifier = WeightNormClassifier(self.bottleneck.out_features, self.num_classes)
        self.source_epochs, self.smooth = int(source_epochs), float(smooth)
        self.ent_par, self.gent, self.cls_par = float(ent_par), float(gent), float(cls_par)
        self.pseudo_cfg = {"interval": None, "rounds": 2, "batch_size": 64, "eval_transform": True, **(pseudo or {})}
        unknown = sorted(set(self.pseudo_cfg) - {"interval", "rounds", "batch_size", "eval_transform"})
        interval = self.pseudo_cfg["interval"]
        if unknown:
            raise ValueError(f"unknown pseudo option(s) {unknown}; SHOT takes interval, rounds, batch_size, eval_transform")
        if not (interval is None or interval == "target_pass" or (isinstance(interval, int) and interval > 0)):
            raise ValueError(f"pseudo.interval must be null, a positive number of batches or 'target_pass', got {interval!r}")
        self.pseudo_labels: PseudoLabelStore | None = None

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None)
        if self.cls_par and self.pseudo_labels is None and dm is not None and hasattr(dm, "target_train"):
            self.pseudo_labels = PseudoLabelStore(len(dm.target_train), self.num_classes).to(self.device)

    # ------------------------------------------------------------------ phases
    def in_source_phase(self) -> bool:
        return self.current_epoch < self.source_epochs

    def training_step(self, batch: dict, batch_idx: int) -> None:
        logs = self.source_step(batch) if self.in_source_phase() else self.target_step(batch)
        if logs:
            self.log_train(logs)

    def source_step(self, batch: dict) -> dict:
        """Phase 1: label-smoothed CE on the source half only."""
        xs, ys = batch["source"]
        z = self(xs)
        loss = F.cross_entropy(z, ys, label_smoothing=self.smooth)
        self.update(loss, "source")
        if not self.logging_step():
            return {}
        with torch.no_grad():
            acc = (z.argmax(1) == ys).float().mean()
        return {"train/loss": loss.detach(), "train/loss_cls": loss.detach(), "train/source_acc": acc}

    def target_step(self, batch: dict) -> dict:
        """Phase 2: the SHOT objective on the target half only (``batch["source"]`` is not read)."""
        xt, idx = target_indices(batch["target"])
        z = self(xt)
        # the buffer indexed directly: the store's own lookup checks the range on the host (a sync)
        y_hat = self.pseudo_labels.labels[idx] if self.cls_par else None
        loss, terms = shot_target_loss(z, y_hat, ent_par=self.ent_par, gent=self.gent, cls_par=self.cls_par)
        self.update(loss, "target")
        if not self.logging_step():
            return {}
        return {"train/loss": loss.detach(), **{f"train/loss_{k}": v.detach() for k, v in terms.items()}}

    def on_train_start(self) -> None:
        super().on_train_start()
        max_epochs = self.trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and self.source_epochs >= max_epochs:
            log.warning("SHOT: source_epochs=%d >= trainer.max_epochs=%d: no target adaptation, this run gives "
                        "the source model only", self.source_epochs, max_epochs)

    def on_train_epoch_start(self) -> None:
        source = self.in_source_phase()
        self.classifier.requires_grad_(source)  # the hypothesis is frozen in the target phase
        if not source and self.cls_par:
            self.refresh_pseudo_labels()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        if self.in_source_phase() or not self.cls_par or batch_idx == 0:
            return
        interval = self.pseudo_cfg["interval"]
        if interval == "target_pass":
            n_batch = len(target_indices(batch["target"])[1]) * max(self.trainer.world_size, 1)
            interval = math.ceil(len(self.pseudo_labels) / n_batch)
        if interval and batch_idx % interval == 0:
            self.refresh_pseudo_labels()

    # ------------------------------------------------------------------ pseudo labels
    def refresh_pseudo_labels(self) -> None:
        """Cluster the whole target train set (eval mode) and store one label per sample."""
        loader = self.trainer.datamodule.target_pass_loader(self.pseudo_cfg["eval_transform"], self.pseudo_cfg["batch_size"])
        self.pseudo_labels.update(*cluster_dataset(self, loader, self.pseudo_cfg["rounds"]))

    # ------------------------------------------------------------------ optimisers
    def optimizer_groups(self) -> dict[str, OptimGroup]:
        """``source`` (G + B + C, the source epochs) and ``target`` (G + B, the remaining epochs)."""
        extractor = [("backbone", self.backbone), ("bottleneck", self.bottleneck)]
        return {"source": OptimGroup([*extractor, ("classifier", self.classifier)], epochs=(0, self.source_epochs)),
                "target": OptimGroup(extractor, epochs=(self.source_epochs, None))}
