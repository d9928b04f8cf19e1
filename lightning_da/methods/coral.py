"""Deep CORAL (Sun & Saenko, "Deep CORAL: Correlation Alignment for Deep Domain Adaptation",
ECCV 2016 workshops).

The second-order statistics of source and target activations are aligned:

    L = CE(z_s, y_s) + trade_off * ||C_S - C_T||_F^2 / (4 d^2)

with ``C`` the unbiased covariance of the batch's rows (``losses.alignment.coral_loss``).

Defaults follow the paper: the loss sits on the last layer, the logits (fc8 of its AlexNet;
``layer: logits``, d = number of classes). The paper sets its weight so that the classification and
CORAL losses are about equal at the end of training and gives no number; the default trade-off is 1.
TLlib has no domain-adaptation Deep CORAL (only its domain-generalisation ``CorrelationAlignmentLoss``).

Flags: ``layer: features`` puts the loss on the bottleneck features (d = their width);
``form: tllib`` uses TLlib's CORAL form, ``mean (mu_S - mu_T)^2 + mean (C_S - C_T)^2``.
"""

from __future__ import annotations

from lightning_da.losses.alignment import coral_loss
from lightning_da.methods.base import SingleStepMethod

LAYERS = ("logits", "features")


class DeepCORAL(SingleStepMethod):
    def __init__(self, *args, layer: str = "logits", form: str = "paper", **kwargs):
        super().__init__(*args, **kwargs)
        if layer not in LAYERS:
            raise ValueError(f"unknown CORAL layer {layer!r}; choose one of {LAYERS}")
        if form not in ("paper", "tllib"):
            raise ValueError(f"unknown CORAL form {form!r}; choose paper or tllib")
        self.layer, self.form = layer, form

    def transfer_loss(self, step):
        if self.layer == "logits":
            return coral_loss(step.source_logits, step.target_logits, self.form), {}
        return coral_loss(step.source_features, step.target_features, self.form), {}
