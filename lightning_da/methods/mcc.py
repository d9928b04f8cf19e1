"""MCC: minimum class confusion (Jin et al., "Minimum Class Confusion for Versatile Domain
Adaptation", ECCV 2020), as a method of its own:

    L = CE(z_s, y_s) + trade_off * L_MCC(z_t / T)

``L_MCC`` (``losses.regularizers.minimum_class_confusion``): ``p = softmax(z_t / T)``, per-row
weights ``w_i = B (1 + exp(-H(p_i))) / sum_j (1 + exp(-H(p_j)))`` (detached), class confusion
``C = P^T diag(w) P`` with each row normalised to sum 1, loss ``(sum C - trace C) / num_classes``.
Defaults are TLlib's MCC (``examples/.../mcc.py``, also its digits scripts): T = 2.5, trade-off 1.
(TLlib divides by the column sums; C is symmetric before normalisation, so the loss is the same.)
TLlib's MCC bottleneck is ``Linear -> BatchNorm -> ReLU`` (no dropout); the digits experiments use
the shared digits heads.
"""

from __future__ import annotations

from lightning_da.losses.regularizers import minimum_class_confusion
from lightning_da.methods.base import SingleStepMethod


class MCC(SingleStepMethod):
    def __init__(self, *args, temperature: float = 2.5, **kwargs):
        super().__init__(*args, **kwargs)
        if temperature <= 0:
            raise ValueError(f"MCC's temperature must be positive, got {temperature}")
        self.temperature = float(temperature)

    def transfer_loss(self, step):
        return minimum_class_confusion(step.target_logits, self.temperature), {}
