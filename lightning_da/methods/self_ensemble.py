"""Self-ensembling: a mean teacher for domain adaptation (French, Mackiewicz & Fisher, ICLR 2018), as
TLlib runs it (``examples/domain_adaptation/image_classification/self_ensemble.py``).

A teacher network (backbone, bottleneck and classifier) is an exponential moving average of the
student's parameters, ``theta' <- alpha theta' + (1 - alpha) theta`` after every optimiser step
(:meth:`after_optimizer_step`); it is a frozen copy of the student at the start, outside the
optimiser, and it is part of the ``state_dict`` (checkpoints carry it). Only *parameters* are
averaged: the teacher's BatchNorm running statistics are its own, updated by its forwards, which run
in training mode (batch statistics, dropout active), as TLlib's ``EMATeacher.train()``.

Each target sample comes as two views (``data.strong_target_view``, switched on by this method):
the student sees the strong view, the teacher the weak one. With ``p = softmax(student(x_strong))``,
``q = softmax(teacher(x_weak))`` (no gradient) and ``m_i = 1[max_c q_ic > threshold]``:

    L = CE(z_s, y_s) + consistency_weight * 1/B sum_i m_i ||p_i - q_i||^2
                     + class_balance_weight * mean_i(m_i) * BCE(mean_i p_i, 1/C)

(``losses.consistency``). The student forwards ``[x_s; x_strong]`` in one call (the library's
domain split); the teacher forwards ``x_weak`` alone. Evaluation uses the student, as TLlib's
``validate(classifier)`` (``predict_with: teacher`` evaluates the teacher instead).

Defaults are TLlib's: EMA ``alpha`` 0.99, ``threshold`` 0.8, ``consistency_weight`` 3
(``--trade-off-cons``), ``class_balance_weight`` 0.01 (``--trade-off-balance``); TLlib trains with
Adam at lr 1e-4 and the inv schedule (gamma 0.001), 10 epochs x 1000 iterations, batch 36, and no
source pre-training (``--pretrain-epochs 0``). The paper thresholds at 0.968 and (in its own code)
weights the class balance by the confident fraction, as here.

Deviations (flags where they matter):

* Views: TLlib's student view is its training transform (random crop, flip, colour jitter 0.7,
  random greyscale) and its teacher view the *evaluation* transform. Here the teacher gets the weak
  view (the domain's usual training transform; for digits the plain digit, as TLlib's) and the
  student the strong view (``data.views``: RandAugment-based), not TLlib's jitter pipeline.
* TLlib forwards source and target through the student in two calls (separate BatchNorm batches);
  here they share one ``[x_s; x_strong]`` call.
* The teacher runs on the target batch alone, so a domain-aware norm (dsbn/transnorm/rn), which needs
  a ``[source; target]`` split in every call, is refused.
* ``trade_off`` is refused: the two terms have their own weights (``consistency_weight``, ``class_balance_weight``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lightning_da.losses.consistency import class_balance_loss, squared_consistency
from lightning_da.methods.base import Needs, SingleStepMethod


class SelfEnsemble(SingleStepMethod):
    needs = Needs(strong_view=True, domain_split=False)
    train_views = ("strong",)  # the student's view; the teacher sees the weak one (guidance)
    unused_options = ("trade_off",)  # its terms have their own weights

    def __init__(self, *args, ema_alpha: float = 0.99, threshold: float = 0.8, consistency_weight: float = 3.0,
                 class_balance_weight: float = 0.01, predict_with: str = "student", **kwargs):
        if not 0.0 <= ema_alpha <= 1.0:
            raise ValueError(f"ema_alpha must be in [0, 1], got {ema_alpha}")
        if predict_with not in ("student", "teacher"):
            raise ValueError(f"predict_with must be 'student' or 'teacher', got {predict_with!r}")
        super().__init__(*args, **kwargs)
        self.ema_alpha, self.threshold, self.predict_with = float(ema_alpha), float(threshold), predict_with
        self.consistency_weight, self.class_balance_weight = float(consistency_weight), float(class_balance_weight)

    def finish_build(self) -> None:
        """After the norm conversion: the teacher, a frozen copy of the converted student."""
        super().finish_build()
        self.teacher = nn.ModuleDict({name: copy.deepcopy(getattr(self, name))
                                      for name in ("backbone", "bottleneck", "classifier")})
        self.teacher.requires_grad_(False)
        for m in self.teacher.modules():  # AdaBN re-estimates the student only
            if getattr(m, "adapt_to_target", False):
                m.adapt_to_target = False

    def domain_split_refusal(self) -> str:
        return ("SelfEnsemble forwards its teacher on the target batch alone, so it cannot use a domain-aware norm "
                "(dsbn/transnorm/rn); use norm=bn or adabn")

    def optimizer_modules(self) -> list[tuple[str, nn.Module]]:
        return [(n, m) for n, m in super().optimizer_modules() if n != "teacher"]

    def teacher_features(self, x: torch.Tensor) -> torch.Tensor:
        t = self.teacher
        return t["bottleneck"](t["backbone"](self.in_memory_format(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict_features(x)[1]

    def predict_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.predict_with == "teacher":
            f = self.teacher_features(x)
            return f, self.teacher["classifier"](f)
        return super().predict_features(x)

    @torch.no_grad()
    def update_teacher(self) -> None:
        """``theta' <- alpha theta' + (1 - alpha) theta`` over the parameters (not the buffers)."""
        alpha = self.ema_alpha
        for name in ("backbone", "bottleneck", "classifier"):
            teacher = list(self.teacher[name].parameters())
            student = list(getattr(self, name).parameters())
            torch._foreach_mul_(teacher, alpha)
            torch._foreach_add_(teacher, student, alpha=1.0 - alpha)

    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        self.update_teacher()

    def guidance(self, step):
        """The teacher's probabilities on the weak view."""
        return self.teacher["classifier"](self.teacher_features(step.views["weak"])).softmax(1)

    def transfer_loss(self, step):
        q = step.guidance
        p = step.target_logits.softmax(1)
        mask = (q.amax(1) > self.threshold).float()
        cons = squared_consistency(p, q, mask)
        balance = class_balance_loss(p) * mask.mean()
        loss = self.consistency_weight * cons + self.class_balance_weight * balance
        logs = {}
        if self.logging_step():
            logs = {"train/loss_consistency": cons.detach(), "train/loss_class_balance": balance.detach(),
                    "train/confident_ratio": mask.mean()}
        return loss, logs
