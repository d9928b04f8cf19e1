"""CMKD: cross-modal knowledge distillation from CLIP, with Residual Sparse Training and FixMatch
(Zhou & Zhou, "Unsupervised Domain Adaptation Harnessing Vision-Language Pre-training", TCSVT 2024).

A CLIP image encoder ``f`` (BatchNorm frozen) feeds two heads: the student task head ``h``
(:class:`~lightning_da.models.clip.CMKDHead`) and the zero-shot prompt head ``g`` built once from the
class prompts (text tower then dropped). ``g`` sits on the *trainable* encoder, so the teacher drifts;
``L_reg`` keeps it accurate and confident. With ``p_h = softmax h(f(x_t))``, ``p_g = softmax g(f(x_t))``:

    L = CE_ls(h(f(x_s)), y_s)                                        (label smoothing 0.1)
      + lambda1 * lamb_t * [ GI(p_h; alpha) + GI(p_m; 1 - alpha) ]   (L_task, L_distill)
      + lambda2 * CE(g(f(x_s)), y_s) + lambda3 * lamb_t * GI(p_g; 1) (L_reg)
      [+ FixMatch on h and on g]

    alpha = exp(-KL(p_g || p_h)) (detached),  p_m = (p_h + sg(p_g)) / 2,
    lamb_t = 2 / (1 + exp(-gamma min(t, T) / T)) - 1  (gamma 1, T = 10000, t = step)

``GI`` and ``alpha`` are :mod:`lightning_da.losses.distillation` in the code's form (class-balanced,
batch-summed GI; KL(p_g||p_h)); ``gini=paper`` and ``alpha_direction=paper`` give the paper's. FixMatch
(``fixmatch.enabled``): pseudo labels from the weak view's ``p_h`` (and ``p_g``), mask ``max >= tau``,
``factor * mean(mask * CE(head(f(x_strong)), y_hat))`` for both heads, not ramped.
``baseline=true`` trains with the source CE only (the paper's "Baseline"). Configured
``extra_losses`` are added on the student head's target logits ``h(f(x_t))``.

The encoder runs once on ``[x_s; x_t (; x_t_strong)]`` (its BatchNorm is frozen, so this equals
separate calls); the task head runs per domain (source, target, strong), as in the code, so its
BatchNorm1d sees per-domain batch statistics.

RST (``rst.enabled``): after every optimiser step, encoder weights within ``tau`` of their pretrained
values are reset (:mod:`lightning_da.models.rst`); the DSP is logged each epoch
(``train/dsp_millions``) and ``checkpoints/rst_sparse.pt`` (sparse residuals + head) is written at the
end of training. Optimiser: SGD nesterov, the encoder at ``lr`` and the head at ``lr * lr_mult.classifier``,
``lr_t = lr (1 + 3e-4 t)^-0.75`` (``scheduler=inv``, gamma 3e-4).
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn.functional as F

from lightning_da.losses import agreement_weight, fixmatch_loss, gini_impurity, sigmoid_ramp
from lightning_da.methods.base import DAMethod, Needs
from lightning_da.models.clip import CMKDHead, zero_shot_head
from lightning_da.models.rst import ResidualSparseTraining, save_sparse_checkpoint


class CMKD(DAMethod):
    #: prompts from the data's class names; the encoder runs on [source; target] with frozen BN, so
    #: domain-aware norms do not apply; ``fixmatch.enabled`` asks for strong target views
    needs = Needs(class_names=True, domain_split=False)
    #: the heads sit on the encoder's own features
    unused_options = ("bottleneck",)

    def __init__(self, *args, class_names: list[str], prompts: dict | None = None, lambda1: float = 0.25,
                 lambda2: float = 0.1, lambda3: float = 0.025, label_smoothing: float = 0.1, lamb_gamma: float = 1.0,
                 lamb_max_iter: int = 10000, gini: str = "code", alpha_direction: str = "code", baseline: bool = False,
                 fixmatch: dict | None = None, rst: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._class_names = list(class_names)
        self.classifier = CMKDHead(self.bottleneck.out_features, len(self._class_names))
        self.zero_shot = zero_shot_head(self.backbone, self._class_names, dict(prompts or {}))
        if baseline and self.extra:
            raise ValueError("cmkd: baseline=true trains with the source CE only, so extra_losses would be ignored; "
                             "drop method.extra_losses or set method.baseline=false")
        self.fixmatch = {"enabled": False, "threshold": 0.95, "factor": 0.5, **(fixmatch or {})}
        rst = {"enabled": False, "tau": 1e-6, **(rst or {})}
        self.rst = ResidualSparseTraining(self.backbone, rst["tau"]) if rst["enabled"] else None
        for name, value in (("gini", gini), ("alpha_direction", alpha_direction)):
            if value not in ("code", "paper"):
                raise ValueError(f"cmkd {name} must be 'code' (the CMKD code) or 'paper' (the manuscript), not {value!r}")

    @classmethod
    def needs_for(cls, options):
        # fixmatch.enabled asks for (weak, strong) target views
        return dataclasses.replace(cls.needs, strong_view=bool((options.get("fixmatch") or {}).get("enabled", False)))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def lamb(self) -> float:
        return sigmoid_ramp(self.global_step, self.hparams.lamb_gamma, self.hparams.lamb_max_iter)

    def encode(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features of each input, in one call when that equals separate calls (no BatchNorm
        in training mode)."""
        batch_stats = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training for m in self.backbone.modules())
        if batch_stats:
            return [self.features(x) for x in xs]
        return list(self.features(torch.cat(xs)).split([len(x) for x in xs]))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        (xs, ys), (xt, _) = batch["source"], batch["target"]
        views = [xs, *xt] if self.fixmatch["enabled"] else [xs, xt]
        f = self.encode(*views)
        zs = self.classifier(f[0])
        loss_cls = F.cross_entropy(zs, ys, label_smoothing=hp.label_smoothing)
        logs, loss = {}, loss_cls
        if not hp.baseline:
            zt = self.classifier(f[1])
            gs, gt = self.zero_shot(f[0]), self.zero_shot(f[1])
            p_h, p_g = zt.softmax(-1), gt.softmax(-1)
            alpha = agreement_weight(zt, gt, hp.alpha_direction)
            lamb = self.lamb()
            loss_task = hp.lambda1 * lamb * gini_impurity(p_h, alpha, hp.gini)
            loss_distill = hp.lambda1 * lamb * gini_impurity(0.5 * (p_h + p_g.detach()), 1 - alpha, hp.gini)
            loss_reg = hp.lambda2 * F.cross_entropy(gs, ys) + hp.lambda3 * lamb * gini_impurity(p_g, 1.0, hp.gini)
            loss = loss + loss_task + loss_distill + loss_reg
            logs.update({"train/loss_task": loss_task, "train/loss_distill": loss_distill, "train/loss_reg": loss_reg,
                         "train/alpha": alpha.mean(), "train/lamb": lamb})
            loss = self.with_extra_losses(loss, logs, zt)  # configured extra_losses: on the student's target logits
            if self.fixmatch["enabled"]:
                thr, factor = self.fixmatch["threshold"], self.fixmatch["factor"]
                fm_h, mask_h, _ = fixmatch_loss(self.classifier(f[2]), p_h, thr)
                fm_g, mask_g, _ = fixmatch_loss(self.zero_shot(f[2]), p_g, thr)
                loss_fm = factor * (fm_h + fm_g)
                loss = loss + loss_fm
                logs.update({"train/loss_fixmatch": loss_fm, "train/mask_student": mask_h.float().mean(),
                             "train/mask_zero_shot": mask_g.float().mean()})
        if self.logging_step():
            with torch.no_grad():
                logs["train/source_acc"] = (zs.argmax(1) == ys).float().mean()
            self.log_train({"train/loss": loss, "train/loss_cls": loss_cls, **logs})
        return loss

    # ------------------------------------------------------------------ RST
    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        if self.rst is not None:
            self.rst.reset_small_changes(self.backbone)

    def on_train_epoch_end(self) -> None:
        if self.rst is not None:
            self.log("train/dsp_millions", self.rst.dsp(self.backbone, self.classifier))

    def on_train_end(self) -> None:
        if self.rst is not None and self.trainer.is_global_zero:
            folder = getattr(self.trainer.checkpoint_callback, "dirpath", None) or self.trainer.default_root_dir
            os.makedirs(folder, exist_ok=True)
            save_sparse_checkpoint(os.path.join(folder, "rst_sparse.pt"), self.rst, self.backbone, self.classifier,
                                   class_names=self._class_names, tau=self.rst.tau, step=self.global_step)
