"""CC loss: minimum class confusion plus class-confusion consistency between weak and strong target
views, TLlib's ``cc_loss`` method (``tllib/self_training/cc_loss.py`` and
``examples/domain_adaptation/image_classification/cc_loss.py``, by Ying Jin, MCC's first author; its
docstring cites MCC: Jin et al., "Minimum Class Confusion for Versatile Domain Adaptation", ECCV 2020).

Each target sample comes as a weak and a strong view (``data.strong_target_view``, switched on by
this method); ``[x_s; x_weak; x_strong]`` is forwarded in one call (target = both views, as TLlib
forwards the three in one batch). With ``z^w``, ``z^s`` the two views' logits and T the temperature:

    L = CE(z_s, y_s) + mcc_weight * L_MCC(z^w) + consistency_weight * L_cc(z^w, z^s)

* ``L_MCC`` is MCC (the library's ``mcc`` regulariser, ``losses.regularizers.minimum_class_confusion``:
  ``(sum C - trace C) / num_classes`` of the entropy-weighted, row-normalised class confusion).
* ``L_cc = ||C(z^w) - C(z^s)||_F^2 / num_classes * (sum_i m_i / B)``, the squared difference of the
  two views' class-confusion matrices over the rows whose weak prediction is confident,
  ``m_i = 1[max softmax(z^w_i / T) >= threshold]``, with the weak view detached
  (``losses.consistency.confusion_consistency``).

So the method is MCC applied to the weak view plus a consistency regulariser of the same confusion
statistic; with ``consistency_weight: 0`` it is MCC (on weakly augmented target images).

Defaults are TLlib's ``cc_loss.py``: T 2.5, threshold 0.95 (its code notes 0.7 for DomainNet),
``--trade-off`` 1 (here ``mcc_weight``) and ``--trade_off_consistency`` 1 (``consistency_weight``);
SGD lr 0.005 (digits script: 0.01 M->U, 0.1 U->M), momentum 0.9, weight decay 1e-3, inv schedule.
``trade_off`` is refused: the two terms have their own weights. Configured ``extra_losses`` act on the
logits of both target views.
Deviation: the strong view here is ``data.views`` (RandAugment-based; for digits torchvision's
RandAugment(2, 10)); TLlib's is its training transform plus timm ``rand-m10-n2-mstd2``.
"""

from __future__ import annotations

from lightning_da.losses.consistency import confusion_consistency
from lightning_da.losses.regularizers import minimum_class_confusion
from lightning_da.methods.base import Needs, SingleStepMethod


class CCLoss(SingleStepMethod):
    needs = Needs(strong_view=True)
    train_views = ("weak", "strong")  # [x_s; x_weak; x_strong] in one forward
    unused_options = ("trade_off",)  # its terms have their own weights

    def __init__(self, *args, temperature: float = 2.5, threshold: float = 0.95, mcc_weight: float = 1.0,
                 consistency_weight: float = 1.0, **kwargs):
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        super().__init__(*args, **kwargs)
        self.temperature, self.threshold = float(temperature), float(threshold)
        self.mcc_weight, self.consistency_weight = float(mcc_weight), float(consistency_weight)

    def transfer_loss(self, step):
        z_weak, z_strong = step.target_logits.chunk(2)
        mcc = minimum_class_confusion(z_weak, self.temperature)
        cons, mask = confusion_consistency(z_weak, z_strong, self.temperature, self.threshold)
        loss = self.mcc_weight * mcc + self.consistency_weight * cons
        logs = {}
        if self.logging_step():
            logs = {"train/loss_mcc": mcc.detach(), "train/loss_consistency": cons.detach(),
                    "train/confident_ratio": mask.mean()}
        return loss, logs
