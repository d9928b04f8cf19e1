"""CGDM: cross-domain gradient discrepancy minimization (Du et al., CVPR 2021), on MCD's three steps.

With target entropy ``Ent`` (``entropy_mode``: ``im`` = mean H(p_i) - H(mean p), ``conditional`` =
mean H(p_i) as in the old Office-31 script, ``diversity`` = -mean_c log(mean_i p_ic) as in the old
digits script), entropy-weighted CE on pseudo labels ``WCE`` (weights
``w_i = 1 + exp(-H_i)`` divided by the constant ``sum_j w_j``, with gradient through each ``w_i`` as in
the original; ``wce_detach_weights=true`` detaches the whole weight instead, not the original's form;
``wce_batch_factor=true`` keeps the original's extra 1/B)
and the gradient discrepancy ``L_GD`` (per head k, for every parameter tensor P of F_k, the cosine
between ``dCE(F_k(f_s), y_s)/dP`` and ``dWCE(F_k(f_t), y_hat)/dP``, per row for matrices, whole
vector for vectors; ``L_GD = mean_k mean_P (1 - cos_P)``), each batch runs:

* A (G, F1, F2): ``CE_s(F1) + CE_s(F2) + w_ent_a [Ent(F1_t) + Ent(F2_t)] + w_pseudo [WCE(F1_t) + WCE(F2_t)]``
* B (F1, F2):    ``CE_s(F1) + CE_s(F2) - w_dis d(F1_t, F2_t) + w_ent_b [Ent...]``
* C (G) x num_k: ``w_dis d(F1_t, F2_t) + w_ent_c [Ent...] + w_gd L_GD`` (second order, into G only)

The pseudo-label terms act only once pseudo labels exist. Pseudo labels come from SHOT-style
clustering (``pseudo_labels.cluster_pseudo_labels``) of G's features with ``softmax(F1 + F2)``
over the whole target train set in eval mode, kept per sample in a :class:`PseudoLabelStore`,
refreshed at the start of every epoch ``>= pseudo.start_epoch`` and, with ``pseudo.interval``,
every that many batches within an epoch (VisDA: 2000). ``pseudo.eval_transform=false`` (faithful)
runs that pass on the training transform, random augmentation included, as the original does.

``train_bottleneck=false`` reproduces the scripts whose generator optimiser covers only the
backbone (VisDA, DomainNet, Office-31): the bottleneck then stays at its initialisation. The
generator optimiser is ``generator_optimizer`` (the original: SGD without momentum). The heads'
initialisation is ``head.init``: ``normal`` for the ResNet scripts' ResClassifier, ``xavier`` for the
digits script's LeNetClassifier (``experiment=digits/cgdm``).
``domain_forward`` is MCD's; with ``"separate"`` every step forwards both domains (its terms need them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_da.losses.bi_classifier import cgdm_entropy, gradient_discrepancy, weighted_cross_entropy
from lightning_da.methods.mcd import MCD
from lightning_da.data.batches import target_indices
from lightning_da.pseudo_labels import PseudoLabelStore, cluster_dataset


class CGDM(MCD):
    def __init__(self, *args, w_ent_a: float = 0.01, w_ent_b: float = 0.01, w_ent_c: float = 0.01,
                 w_pseudo: float = 0.01, w_gd: float = 0.01, entropy_mode: str = "im", wce_batch_factor: bool = True,
                 wce_detach_weights: bool = False,
                 train_bottleneck: bool = True, pseudo: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        cgdm_entropy(torch.zeros(2, 2), entropy_mode)  # an unknown mode fails now, listing the modes
        self.w_ent = {"A": w_ent_a, "B": w_ent_b, "C": w_ent_c}
        self.w_pseudo, self.w_gd, self.entropy_mode = w_pseudo, w_gd, entropy_mode
        self.wce_batch_factor, self.train_bottleneck = wce_batch_factor, train_bottleneck
        self.wce_detach_weights = wce_detach_weights
        self.pseudo_cfg = {"start_epoch": 1, "interval": None, "rounds": 2, "batch_size": 64, "eval_transform": False,
                           **(pseudo or {})}
        self.pseudo_labels: PseudoLabelStore | None = None
        self._pseudo_ready = False

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule
        if self.pseudo_labels is None:
            self.pseudo_labels = PseudoLabelStore(len(dm.target_train), self.num_classes).to(self.device)

    def generator_modules(self):
        modules = super().generator_modules()
        return modules if self.train_bottleneck else [(n, m) for n, m in modules if n != "bottleneck"]

    # ------------------------------------------------------------------ losses of the three steps
    def _wce(self, logits, labels):
        return weighted_cross_entropy(logits, labels, extra_batch_factor=self.wce_batch_factor,
                                      detach_weights=self.wce_detach_weights)

    def step_domains(self, step: str) -> tuple[bool, bool]:
        # every step's terms use both domains (A: target entropy and pseudo labels; C: L_GD's source CE)
        return True, True

    def step_terms(self, step, f, z1, z2, ns, batch):
        zt1, zt2 = z1[ns:], z2[ns:]
        loss = f.new_zeros(())
        logs = {}
        if self.w_ent[step]:
            ent = cgdm_entropy(zt1, self.entropy_mode) + cgdm_entropy(zt2, self.entropy_mode)
            loss = loss + self.w_ent[step] * ent
            logs["train/loss_entropy"] = ent.detach()
        if step == "B" or not self.pseudo_active():
            return loss, logs
        _, idx = target_indices(batch["target"])
        y_hat = self.pseudo_labels[idx]
        if step == "A" and self.w_pseudo:
            wce = self._wce(zt1, y_hat) + self._wce(zt2, y_hat)
            loss = loss + self.w_pseudo * wce
            logs["train/loss_pseudo"] = wce.detach()
        if step == "C" and self.w_gd:
            ys = batch["source"][1]
            gd = torch.stack([
                gradient_discrepancy(F.cross_entropy(z[:ns], ys), self._wce(z[ns:], y_hat), head.parameters())
                for z, head in ((z1, self.classifier), (z2, self.classifier2))]).mean()
            loss = loss + self.w_gd * gd
            logs["train/loss_gd"] = gd.detach()
        return loss, logs

    # ------------------------------------------------------------------ pseudo labels
    def pseudo_active(self) -> bool:
        # a Python flag, not store.has_labels: no device sync in the step
        return self.current_epoch >= self.pseudo_cfg["start_epoch"] and self._pseudo_ready

    def on_train_epoch_start(self) -> None:
        if self.current_epoch >= self.pseudo_cfg["start_epoch"]:
            self.refresh_pseudo_labels()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        interval = self.pseudo_cfg["interval"]
        if interval and batch_idx > 0 and batch_idx % interval == 0 and self.current_epoch >= self.pseudo_cfg["start_epoch"]:
            self.refresh_pseudo_labels()

    def refresh_pseudo_labels(self) -> None:
        """Cluster the whole target train set and store one label per sample."""
        loader = self.trainer.datamodule.target_pass_loader(self.pseudo_cfg["eval_transform"], self.pseudo_cfg["batch_size"])
        self.pseudo_labels.update(*cluster_dataset(self, loader, self.pseudo_cfg["rounds"]))
        self._pseudo_ready = True
