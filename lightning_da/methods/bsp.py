"""BSP: batch spectral penalization (Chen et al., "Transferability vs. Discriminability: Batch
Spectral Penalization for Adversarial Domain Adaptation", ICML 2019), on top of CDAN (+E).

The largest singular values of the source and target bottleneck-feature matrices are penalised, so
that the other eigen-directions keep their discriminative structure (``losses.spectral``):

    L = CE(z_s, y_s) + trade_off * [ L_CDAN + bsp_weight * sum_{i<=k} (sigma_i(F_s)^2 + sigma_i(F_t)^2) ]
        + sum_k w_k L_k(z_t)

``L_CDAN`` is :class:`~lightning_da.methods.cdan.CDAN`'s transfer loss (CDAN+E by default,
``entropy_conditioning``), so the penalty's effective weight is ``trade_off * bsp_weight`` (both
trade-offs are 1 in TLlib and the paper's code, so the two coincide at the defaults).

Defaults: k = 1 and ``bsp_weight`` 1e-4 (the paper's code ``BSP+CDAN.py``, and TLlib's digits
scripts; TLlib's ``bsp.py`` default is 2e-4). The paper's code is BSP + CDAN+E, as here.
Deviations from TLlib: TLlib's ``bsp.py`` is BSP + *DANN* (its discriminator sees the features), with
a source-only pretraining phase (3 epochs at lr 0.001) before adaptation; neither is reproduced here
(BSP rides on the library's CDAN, and there is no pretraining phase).
"""

from __future__ import annotations

from lightning_da.losses.spectral import batch_spectral_penalty
from lightning_da.methods.cdan import CDAN


class BSP(CDAN):
    def __init__(self, *args, bsp_weight: float = 1e-4, bsp_k: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        if bsp_k < 1:
            raise ValueError(f"BSP's bsp_k (number of penalised singular values) must be >= 1, got {bsp_k}")
        self.bsp_weight, self.bsp_k = float(bsp_weight), int(bsp_k)

    def transfer_loss(self, step):
        loss, logs = super().transfer_loss(step)
        penalty = batch_spectral_penalty(step.source_features, step.target_features, self.bsp_k)
        return loss + self.bsp_weight * penalty, {**logs, "train/loss_bsp": penalty}
