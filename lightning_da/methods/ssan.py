"""SSAN: Simultaneous Semantic Alignment Network for heterogeneous DA (Li et al., ACM MM 2020).

Source and target have different features (SURF 800-d -> DeCAF6 4096-d); the whole source and a
few labelled target samples per class are labelled. One projector per domain maps into a common
256-d space (L2-normalised), a shared classifier C predicts classes, a linear discriminator D the
domain. One full-batch step (:class:`~lightning_da.data.full_batch.FullBatchDataModule`) minimises

    L = CE(z_s, y_s) + L_ISC + gamma L_D + beta L_ESA          (alpha 0.1, beta 0.004, gamma 0.1, T 5)

* L_ISC, implicit semantic correlation (:func:`~lightning_da.losses.semantic.implicit_semantic_correlation_loss`):
  ``(1 - alpha) CE(z_l, y_l) + alpha L_soft``, with source class soft labels at temperature T
  that are NOT detached (gradients reach the source branch), target softmax at T = 1, summed over
  classes and averaged within a class.
* L_D = BCE(D(GRL_lambda([f_s; f_l; f_u])), [1]*n_s + [0]*(n_l + n_u)), the mean over all rows;
  ``lambda = 2 / (1 + exp(-10 step / steps)) - 1`` (the DANN schedule over the whole run).
* L_ESA, triplet-centroid alignment (:func:`~lightning_da.losses.semantic.centroid_alignment_loss`)
  between source and target class centroids (and their pooled centroid), summed squared errors.
  The target of class k is its labelled samples plus the unlabelled samples whose network label
  ``argmax z_u`` agrees with the geometric label ``argmax_k cos(f_u, c_k)``, with prototypes
  ``c_k`` over source and labelled target, recomputed every step
  (:func:`~lightning_da.losses.semantic.agreement_mask`).

Faithful to the original code (BIT-DA/SSAN) by default:

* projectors ``Linear(d, (d+256)//2) -> LeakyReLU(0.2) -> Linear(., 256) -> LeakyReLU(0.2)`` then
  L2 normalisation; classifier ``Linear(256, C) -> LeakyReLU(0.2)`` (LeakyReLU on the logits);
  D = ``Linear(256, 1)``; every weight and bias ~ N(0, 0.01^2);
* nesterov SGD, lr 0.1, momentum 0.9, weight decay 1e-3 on every part, no schedule; 3000 steps;
* the original's best-over-training target accuracy is reported as ``oracle`` (it uses target
  labels); the last-step accuracy is the honest number.

Differences (behaviour-preserving unless a flag says otherwise):

* the projector is picked by domain, not by input width (the original breaks when d_s == d_t);
* D outputs a logit and the loss is ``binary_cross_entropy_with_logits`` (the original's Sigmoid +
  BCELoss, the same value and gradient up to BCELoss's clamp of log at -100);
* one optimiser with per-module groups instead of two identical SGD optimisers (identical updates);
* labelled and unlabelled target are selected by masks, not ``nonzero`` (no host sync); classes
  with no member in a centroid or soft-label average are left out instead of producing NaN.

Flags: ``alpha``, ``beta``, ``gamma``, ``temperature``; ``prototype`` (``three`` | ``two``);
``combine_pred`` (``Cosine`` default, ``Euclidean``, ``Cosine_threshold``, ``Euclidean_threshold``,
``None`` = every unlabelled sample with its network label). Note ``Euclidean_threshold`` compares
``max_k -||f - c_k||^2 <= 0`` with 0.2 as the original does, so it selects no unlabelled sample.
Architecture flags are those of :class:`~lightning_da.methods.hda.HDANet` (``layer``, ``d_common``,
``logit_leaky_relu``, ``normalize_features``, ``init_std``).

Usage (SURF of Caltech -> DeCAF6 of DSLR, pre-drawn split 0 of 20; results.json gets ``last`` and
the ``oracle`` best over the 3000 steps)::

    python run.py experiment=hda/ssan task=surf_decaf_c2d data.split=0
    python -m benchmarks.hda_partitions --methods ssan --tasks c2d --splits 20 --out bench_out/hda
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_da.losses.semantic import agreement_mask, centroid_alignment_loss, implicit_semantic_correlation_loss
from lightning_da.methods.hda import HDANet
from lightning_da.models.projectors import LinearDiscriminator

COMBINE_PRED = ("Cosine", "Euclidean", "Cosine_threshold", "Euclidean_threshold", "None")


class SSAN(HDANet):
    def __init__(self, *args, alpha: float = 0.1, beta: float = 0.004, gamma: float = 0.1, temperature: float = 5.0,
                 prototype: str = "three", combine_pred: str | None = "Cosine", grl: dict | None = None, **kwargs):
        if prototype not in ("two", "three"):
            raise ValueError(f"method.prototype must be two or three, not {prototype!r}")
        if str(combine_pred) not in COMBINE_PRED:
            raise ValueError(f"method.combine_pred must be one of {COMBINE_PRED}, not {combine_pred!r}")
        super().__init__(*args, **kwargs)
        self.grl = self.make_grl(**(grl or {}))
        self.discriminator = LinearDiscriminator(self.backbone.out_features, self.hparams.init_std)

    def hda_loss(self, out: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        h = self.hparams
        f_s, f_l, f_u, z_s, z_l, z_u, y_s, y_l = (out[k] for k in ("f_s", "f_l", "f_u", "z_s", "z_l", "z_u", "y_s", "y_l"))
        loss_source = F.cross_entropy(z_s, y_s)
        loss_isc, hard, soft = implicit_semantic_correlation_loss(z_s, y_s, z_l, y_l, h.alpha, h.temperature)
        loss = loss_source + loss_isc
        logs = {"train/loss_cls": loss_source, "train/loss_isc": loss_isc, "train/loss_isc_hard": hard, "train/loss_isc_soft": soft}
        if h.gamma:
            logs["train/grl_coeff"] = self.grl.coeff
            d = self.discriminator(self.grl(torch.cat([f_s, f_l, f_u])))
            domain = torch.cat([d.new_ones(len(f_s)), d.new_zeros(len(f_l) + len(f_u))])
            loss_domain = F.binary_cross_entropy_with_logits(d, domain)
            loss = loss + h.gamma * loss_domain
            logs["train/loss_domain"] = loss_domain
        if h.beta:
            y_u, selected = agreement_mask(z_u, f_u, torch.cat([f_s, f_l]), torch.cat([y_s, y_l]), self.num_classes,
                                           str(h.combine_pred), self.global_step)
            loss_esa = centroid_alignment_loss(f_s, y_s, torch.cat([f_l, f_u]), torch.cat([y_l, y_u]), self.num_classes,
                                               h.prototype, torch.cat([selected.new_ones(len(f_l)), selected]))
            loss = loss + h.beta * loss_esa
            logs["train/loss_esa"] = loss_esa
            logs["train/selected_fraction"] = selected.float().mean()
        return loss, logs
