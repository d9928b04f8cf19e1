"""BNM: batch nuclear-norm maximisation (Cui et al., "Towards Discriminability and Diversity:
Batch Nuclear-norm Maximization under Label Insufficient Situations", CVPR 2020), as a method:

    L = CE(z_s, y_s) + trade_off * L_BNM,   L_BNM = -mean(singular values of softmax(z_t))

(``losses.regularizers.batch_nuclear_norm``), which is the official code's ``-mean(svd(P).S)`` =
``-||P||_* / min(B, C)``; the paper writes ``-||P||_* / B`` (the same for B <= C, otherwise a
constant factor C / B that the trade-off absorbs). Default trade-off 1, the official DA code's
``--trade_off``. TLlib has no BNM.
"""

from __future__ import annotations

from lightning_da.losses.regularizers import batch_nuclear_norm
from lightning_da.methods.base import SingleStepMethod


class BNM(SingleStepMethod):
    def transfer_loss(self, step):
        return batch_nuclear_norm(step.target_logits), {}
