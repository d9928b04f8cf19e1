"""Semi-supervised heterogeneous DA: the shared model and the two baselines.

Source and target live in different feature spaces (e.g. 800-d SURF and 4096-d DeCAF6). The
network is one projector per domain into a common ``d_common``-d space (routed by domain, see
:class:`~lightning_da.models.projectors.DomainProjectors`; it sits where the other methods have
their backbone) and a shared classifier. Data come from
:class:`~lightning_da.data.full_batch.FullBatchDataModule`, one full batch per step::

    {"source": (x_s, y_s), "target_labeled": (x_l, y_l), "target": (x_u, idx_u)}

* :class:`HDANet` (``method=hda_net``), the alignment-free baseline: ``L = CE(z_s, y_s) + CE(z_l, y_l)``.
* :class:`TargetOnly` (``method=target_only``): the target projector and classifier trained on the
  labelled target only, ``L = CE(z_l, y_l)``.

Both use SSAN's architecture and initialisation by default (LeakyReLU on the logits, N(0, 0.01^2)),
so that SSAN's own losses are the only difference. Each training step returns the unlabelled
target logits as ``target_logits``; :class:`~lightning_da.callbacks.StepwiseTargetAccuracy` (added
by :meth:`HDANet.configure_callbacks`) turns them into the oracle best-over-training accuracy.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from lightning_da.callbacks import StepwiseTargetAccuracy
from lightning_da.methods.base import DAMethod, Needs
from lightning_da.models.projectors import DomainProjectors, HDAClassifier


class HDANet(DAMethod):
    """Per-domain projectors + shared classifier, no alignment loss. Args:

    input_dims: ``{"source": d_s, "target": d_t}`` (given by the DataModule's ``model_kwargs``).
    d_common: width of the common space (256). layer: ``double`` or ``single`` projectors.
    normalize_features: L2-normalise projector outputs (SSAN: yes).
    logit_leaky_relu: LeakyReLU(0.2) on the classifier logits (SSAN quirk: yes).
    init_std: N(0, init_std^2) initialisation of every Linear (SSAN: 0.01; null: PyTorch default).
    stepwise_oracle: track the unlabelled-target accuracy of every step (oracle best-over-training).
    input_bases: the row-space bases of the domains given in row-space coordinates (from the
        DataModule with ``data.row_space=true``; see :class:`~lightning_da.models.projectors.DomainProjectors`).
        The checkpoint's hyper-parameters keep only their widths.
    """

    #: the per-domain projectors are built from the data's input widths (no backbone config); each
    #: projector sees one domain, so there is no joint batch to split
    needs = Needs(backbone=False, domain_split=False)
    unused_options = ("bottleneck",)  # the projectors end in the common space

    def __init__(self, input_dims: dict[str, int], num_classes: int, optimizer: Callable, scheduler: Callable | None = None,
                 backbone=None, norm=None, d_common: int = 256, layer: str = "double", normalize_features: bool = True,
                 logit_leaky_relu: bool = True, init_std: float | None = 0.01, lr_mult: dict | None = None,
                 stepwise_oracle: bool = True, input_bases: dict | None = None):
        if backbone is not None:
            raise ValueError(f"{type(self).__name__} builds one projector per domain from the data's input dims; "
                             "it takes no backbone (experiments: backbone: null; command line: drop backbone=...)")
        projectors = DomainProjectors(dict(input_dims), d_common, layer, normalize_features, init_std, input_bases)
        super().__init__(projectors, num_classes, optimizer, scheduler, norm=norm, lr_mult=lr_mult)
        if input_bases:  # the widths, not the d x n matrices, go to the checkpoint (and rebuild the layers)
            self.hparams["input_bases"] = {d: b if isinstance(b, int) else int(b.shape[1]) for d, b in input_bases.items()}
        self.classifier = HDAClassifier(self.backbone.out_features, num_classes, logit_leaky_relu, init_std)
        self.input_dims = dict(input_dims)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def configure_callbacks(self):
        return [*super().configure_callbacks(), *([StepwiseTargetAccuracy()] if self.hparams.stepwise_oracle else [])]

    # ------------------------------------------------------------------ training
    def forward_hda(self, batch: dict) -> dict[str, torch.Tensor]:
        """Features and logits of source, labelled and unlabelled target (each projector once per
        domain part; the classifier once on all rows)."""
        (xs, ys), (xl, yl), (xu, _) = batch["source"], batch["target_labeled"], batch["target"]
        f_s, f_l, f_u = self.backbone(xs, "source"), self.backbone(xl, "target"), self.backbone(xu, "target")
        z_s, z_l, z_u = self.classifier(torch.cat([f_s, f_l, f_u])).split([len(xs), len(xl), len(xu)])
        return {"f_s": f_s, "f_l": f_l, "f_u": f_u, "z_s": z_s, "z_l": z_l, "z_u": z_u, "y_s": ys, "y_l": yl}

    def hda_loss(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        loss_source, loss_target = F.cross_entropy(out["z_s"], out["y_s"]), F.cross_entropy(out["z_l"], out["y_l"])
        return loss_source + loss_target, {"train/loss_cls": loss_source, "train/loss_target_cls": loss_target}

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        out = self.forward_hda(batch)
        loss, logs = self.hda_loss(out)
        if self.logging_step():
            if "z_s" in out:
                with torch.no_grad():
                    logs["train/source_acc"] = (out["z_s"].argmax(1) == out["y_s"]).float().mean()
            self.log_train({"train/loss": loss, **logs})
        return {"loss": loss, "target_logits": out["z_u"].detach()}


class TargetOnly(HDANet):
    """The labelled target alone: ``L = CE(z_l, y_l)`` (the source projector is built but unused)."""

    def forward_hda(self, batch: dict) -> dict[str, torch.Tensor]:
        (xl, yl), (xu, _) = batch["target_labeled"], batch["target"]
        z_l = self.classifier(self.backbone(xl, "target"))
        with torch.no_grad():
            z_u = self.classifier(self.backbone(xu, "target"))
        return {"z_l": z_l, "z_u": z_u, "y_l": yl}

    def hda_loss(self, out):
        loss = F.cross_entropy(out["z_l"], out["y_l"])
        return loss, {"train/loss_target_cls": loss}

    def optimizer_modules(self):
        # the source projector gets no gradient: leave it out of the optimiser (weight decay included)
        return [("target_projector", self.backbone.projectors["target"]), ("classifier", self.classifier)]
