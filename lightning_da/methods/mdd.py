"""MDD: margin disparity discrepancy (Zhang et al., "Bridging Theory and Algorithm for Domain
Adaptation", ICML 2019), as TLlib's ``mdd.py``.

Two heads on the bottleneck features f: the main head F (the prediction, used for evaluation) and an
adversarial head F' behind a gradient reversal layer R. With ``h = argmax F(f)`` (no gradient) and
``p' = softmax(F'(R(f)))`` (``losses.margin``):

    L = CE(F(f_s), y_s) + trade_off * [ gamma * mean_s CE(F'(R(f_s)), h_s) - mean_t log(1 - p'_t[h_t]) ]
        + sum_k w_k L_k(z_t)

F' minimises the bracket (maximises the discrepancy); through R the features minimise the
discrepancy; F learns from the source labels only.

Defaults (TLlib ``mdd.py`` / ``tllib.alignment.mdd``): margin gamma 4 (TLlib uses 4 everywhere but
ImageNet -> Sketch, 2), trade-off 1, warm-start GRL ``coeff = 2 hi / (1 + exp(-alpha i / max_iters)) - hi``
with alpha 1, lo 0, hi 0.1, max_iters 1000, stepped once per iteration (here from ``global_step``).
TLlib's heads, mapped onto the library's parts:

* bottleneck ``Linear(d, 1024) -> BN -> ReLU -> Dropout(0.5)`` with weights N(0, 0.005), bias 0.1:
  ``bottleneck: {dim: 1024, batch_norm: true, relu: true, dropout: 0.5, init: normal}``;
* each head ``Linear(1024, width) -> ReLU -> Dropout(0.5) -> Linear(width, C)``: a
  :class:`~lightning_da.models.heads.Bottleneck` (no BN) then a
  :class:`~lightning_da.models.heads.Classifier`, ``head: {width: 1024, dropout: 0.5}`` (TLlib sets
  ``width = --bottleneck-dim``); ``head_init: tllib`` draws both heads' Linear weights from N(0, 0.01)
  with zero bias (``default``: PyTorch's). MDD builds its own heads, so ``classifier_init`` is refused.

TLlib's MDD gives the backbone 0.1x the learning rate even from scratch (digits): ``lr_mult`` in the
experiment config.
"""

from __future__ import annotations

from torch import nn

from lightning_da.losses.margin import margin_disparity_discrepancy
from lightning_da.methods.base import SingleStepMethod
from lightning_da.models.heads import Bottleneck, Classifier

HEAD_INITS = ("tllib", "default")
WARM_START_GRL = {"alpha": 1.0, "max_iters": 1000, "lo": 0.0, "hi": 0.1, "auto_step": False}


class MDD(SingleStepMethod):
    #: the main and adversarial heads are two-layer (``head``, ``head_init``)
    linear_classifier = False
    unused_options = ("classifier_init",)

    def __init__(self, *args, margin: float = 4.0, grl: dict | None = None, head: dict | None = None,
                 head_init: str = "tllib", **kwargs):
        if head_init not in HEAD_INITS:
            raise ValueError(f"unknown MDD head_init {head_init!r}; choose one of {HEAD_INITS}")
        super().__init__(*args, **kwargs)
        self.margin = float(margin)
        head_cfg = {"width": 1024, "dropout": 0.5, **(head or {})}
        self.classifier = self._make_head(head_cfg["width"], head_cfg["dropout"], head_init)
        self.grl = self.make_grl(**{**WARM_START_GRL, **(grl or {})})
        self.adv_head = self._make_head(head_cfg["width"], head_cfg["dropout"], head_init)

    def _make_head(self, width: int, dropout: float, init: str) -> nn.Sequential:
        head = nn.Sequential(Bottleneck(self.bottleneck.out_features, width, batch_norm=False, relu=True,
                                        dropout=dropout), Classifier(width, self.num_classes))
        if init == "tllib":
            for m in head.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0.0, 0.01)
                    nn.init.zeros_(m.bias)
        return head

    def transfer_loss(self, step):
        coeff = self.grl.coeff
        adv_logits = self.adv_head(self.grl(step.features))
        loss, loss_s, loss_t = margin_disparity_discrepancy(step.logits, adv_logits, step.n_source, self.margin)
        return loss, {"train/grl_coeff": coeff, "train/mdd_source": loss_s, "train/mdd_target": loss_t}
