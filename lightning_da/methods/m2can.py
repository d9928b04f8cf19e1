"""M2CAN: Multi-source Multi-modal Contrastive Adversarial Network (Zhao et al., Information Fusion 2025).

Model (``backbone`` = :class:`~lightning_da.models.multimodal.TwoBranchNet`): unit-norm 256-d
features ``t`` and ``v`` of the two branches, MLB fusion ``X = fuse(t, v)`` (64-d), ``n_heads``
linear heads whose mean logit is the prediction, modality heads ``h_t(t)``, ``h_v(v)``, and one
CDAN discriminator ``D_ab`` per domain pair (sources in order, then the target).

Per step, with D domain batches (the N sources, plus the UACR-selected target with its pseudo
labels after ``source_only_epochs``), views ``t, t', v, v'`` and the four fusions
``X_ab = fuse(a, b)``, ``a in {t, t'}``, ``b in {v, v'}`` (``losses.multimodal`` has the formulas):

    L_task = sum_d sum_h sum_ab CE(head_h(X_ab), y_d) / (4 D H) + sum_d CE(mean_h head_h(X_tv), y_d) / D
             + sum_d [CE(h_t(t), y_d) + CE(h_v(v), y_d)] / (2 D)
    L_1    = L_task + w_cmcfa sum_d CMCFA_d + w_cdcfa CDCFA + w_mcc MCC(mean_h head_h(X_tv) of the target, T=2)
    L_2    = L_1 + w_cdafa mean_{pairs (a, b)} BCE(D_ab(GRL_ab(softmax(g).detach() (outer) X_tv)), 1-eps | eps)

Optimisation (manual): backward L_1; SAM perturbation ``w + rho g/||g||`` of everything but the
discriminators; forward again, backward L_2; step the discriminators' Adam; restore ``w`` and step
the base Adam with the perturbed-point gradients; step both poly schedules. The adversarial term is
only in the second pass. Each GRL is the warm-start schedule ``2/(1+exp(-i/1000)) - 1`` counting
its own calls.

UACR: after every epoch (except the last) the target train split (weak view) is scored by
``max p * exp(-(KL(p1||p2) + KL(p2||p1)))`` and the top ``floor(rate N / C)`` per predicted class,
``rate = min(0.3 + 0.3 e, 1)``, become next epoch's target training set (pseudo labels kept in a
:class:`~lightning_da.pseudo_labels.PseudoLabelStore`, the target sampler restricted to them and
resampled with repetition; nothing is written to disk).

Configured ``extra_losses`` are added to ``L_1`` on the target's fused logits (when the target is present).

Faithful quirks kept: every head is trained on every domain (heads are not source-specific);
discriminator labels 0.2 / 0.8 (``disc_label_eps=0.8``); the CMCFA KL term is not detached; CDCFA
has no negatives; MCC weight equals the CDAFA weight in the original configs.
Deviations (documented): all domains go through the branches in one concatenated call (the
original forwards domain by domain, which changes BatchNorm batch statistics of image backbones
in train mode); with more than two heads UACR's disagreement is the mean over head pairs; with
N sources there are ``N (N + 1) / 2`` discriminators, source pairs at ``lr.disc_sources`` and
source-target pairs at ``lr.disc_target`` (2e-4 / 3e-4 in the original's 2-source setting).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from lightning_da.data.batches import cat_inputs, input_len
from lightning_da.losses import multilinear_map
from lightning_da.losses.multimodal import cdcfa_loss, cmcfa_loss, soft_label_domain_loss, uacr_rate, uacr_select
from lightning_da.losses.regularizers import minimum_class_confusion
from lightning_da.methods.base import DAMethod, Needs, OptimGroup
from lightning_da.models.grl import GradientReversal
from lightning_da.models.multimodal import ModalityHead, MultiHeadClassifier, PairDiscriminator, TwoBranchNet
from lightning_da.optim import SAMPerturbation
from lightning_da.eval_pass import eval_mode, predict_dataset
from lightning_da.pseudo_labels import PseudoLabelStore

DEFAULT_LR = {"backbone": 2e-5, "extractor": 2e-5, "mlb": 5e-4, "heads": 5e-4, "disc_sources": 2e-4, "disc_target": 3e-4}


class M2CAN(DAMethod):
    automatic_optimization = False
    #: one batch per source domain; the domains go through the branches in one call without a split
    needs = Needs(multi_source=True, domain_split=False)
    #: the fused features feed the heads directly; learning rates come from ``lr`` per part; inputs
    #: are dicts (no memory format) and the branches are not run through the backbone's forward
    #: (nothing for ``compile`` to compile)
    unused_options = ("bottleneck", "lr_mult", "group_options", "channels_last", "compile")

    def __init__(self, backbone: TwoBranchNet, num_classes: int, optimizer, scheduler=None, norm=None,
                 n_heads: int = 2, n_sources: int | None = None, lr: dict | None = None, sam_rho: float = 0.05,
                 w_cmcfa: float = 0.5, w_cdcfa: float = 0.2, w_cdafa: float = 0.05, w_mcc: float = 0.05,
                 mcc_temperature: float = 2.0, contrastive_temperature: float = 1.0, disc_label_eps: float = 0.8,
                 grl: dict | None = None, pseudo: dict | None = None, source_only_epochs: int = 1, **kwargs):
        if not isinstance(backbone, TwoBranchNet):
            raise TypeError(f"M2CAN needs a two-branch multi-modal backbone (models.multimodal.TwoBranchNet), got "
                            f"{type(backbone).__name__}; use a multi-modal backbone config (e.g. backbone=mm_minilm_bow)")
        unknown = sorted(set(lr or {}) - set(DEFAULT_LR))
        if unknown:
            raise ValueError(f"M2CAN lr names unknown modules {unknown}; it has {sorted(DEFAULT_LR)}")
        super().__init__(backbone, num_classes, optimizer, scheduler, norm, **kwargs)
        self._n_heads, self._grl_cfg = n_heads, {"alpha": 1.0, "max_iters": 1000, **(grl or {})}
        dim = backbone.extractor_t.linear.out_features
        self.classifier = MultiHeadClassifier(backbone.out_features, num_classes, n_heads)
        self.text_head, self.image_head = ModalityHead(dim, num_classes), ModalityHead(dim, num_classes)
        self.lrs = {**DEFAULT_LR, **(lr or {})}
        self.pseudo_cfg = {"start_rate": 0.3, "update_rate": 0.3, **(pseudo or {})}
        self.n_sources = None
        if n_sources is not None:
            self.build_discriminators(n_sources)
        self.store: PseudoLabelStore | None = None

    # ------------------------------------------------------------------ model
    def build_discriminators(self, n_sources: int) -> None:
        """One discriminator and GRL per pair of the ``n_sources + 1`` domains (target last)."""
        self.n_sources = n_sources
        self.pairs = list(itertools.combinations(range(n_sources + 1), 2))
        d_in = self.backbone.out_features * self.num_classes
        self.discriminators = nn.ModuleList(PairDiscriminator(d_in) for _ in self.pairs)
        self.grls = nn.ModuleList(GradientReversal(auto_step=True, **self._grl_cfg) for _ in self.pairs)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """The prediction from the fused weak-view features ``X``: the mean of the heads' logits."""
        return self.classifier(features).mean(1)

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        if getattr(dm, "combine_sources", False):
            raise ValueError("M2CAN trains on each source domain separately: set data.combine_sources=false")
        n = len(dm.source_names)
        if self.n_sources is None:
            self.build_discriminators(n)
        elif self.n_sources != n:
            raise ValueError(f"method.n_sources={self.n_sources} but data.source lists {n} domains: {dm.source_names}")
        if self.store is None:
            self.store = PseudoLabelStore(len(dm.target_train), self.num_classes).to(self.device)
        super().setup(stage)

    # ------------------------------------------------------------------ losses
    def domain_losses(self, domains: list[tuple[object, torch.Tensor]], domain_ids: list[int], adversarial: bool) -> tuple[torch.Tensor, dict]:
        """``L_1`` (and ``w_cdafa L_CDAFA`` when ``adversarial``) on the domain batches ``domains``;
        ``domain_ids`` are their indices among ``[sources..., target]``."""
        sizes = [input_len(x) for x, _ in domains]
        t, t2, v, v2 = self.backbone.encode_views(cat_inputs([x for x, _ in domains]))
        n, nd, heads = sum(sizes), len(domains), self._n_heads
        x_mm = self.backbone.fuse(torch.cat([t, t, t2, t2]), torch.cat([v, v2, v, v2]))  # (4n, 64)
        z = self.classifier(x_mm)                                                      # (4n, H, C)
        z_tv = z[:n]
        zt, zv = self.text_head(t), self.image_head(v)
        ce_heads = F.cross_entropy(z.flatten(0, 1), torch.cat([y for _, y in domains]).repeat(4).repeat_interleave(heads),
                                   reduction="none").view(4, n, heads)
        ce_mean = F.cross_entropy(z_tv.mean(1), torch.cat([y for _, y in domains]), reduction="none")
        ce_mod = F.cross_entropy(zt, torch.cat([y for _, y in domains]), reduction="none") + \
            F.cross_entropy(zv, torch.cat([y for _, y in domains]), reduction="none")
        loss_task = t.new_zeros(())
        loss_cm = t.new_zeros(())
        text, image, fused, start = [], [], [], 0
        for b in sizes:
            s = slice(start, start + b)
            loss_task = loss_task + ce_heads[:, s].mean(1).sum() / (4 * nd * heads) + ce_mean[s].mean() / nd + \
                ce_mod[s].mean() / (2 * nd)
            loss_cm = loss_cm + cmcfa_loss(t[s], t2[s], v[s], v2[s], zt[s], zv[s], self.hparams.contrastive_temperature)
            text.append((t[s], t2[s]))
            image.append((v[s], v2[s]))
            fused.append((x_mm[s], z_tv[s].mean(1)))
            start += b
        loss_cd = cdcfa_loss(text, image)
        loss = loss_task + self.hparams.w_cmcfa * loss_cm + self.hparams.w_cdcfa * loss_cd
        logs = {"train/loss_cls": loss_task.detach(), "train/loss_cmcfa": loss_cm.detach(), "train/loss_cdcfa": loss_cd.detach()}
        if self.n_sources in domain_ids:  # the target is present
            loss_mcc = minimum_class_confusion(fused[-1][1], self.hparams.mcc_temperature)
            loss = loss + self.hparams.w_mcc * loss_mcc
            logs["train/loss_mcc"] = loss_mcc.detach()
            loss = self.with_extra_losses(loss, logs, fused[-1][1])  # configured extra_losses: like MCC
        if adversarial:
            pos = {d: i for i, d in enumerate(domain_ids)}
            terms = []
            for k, (a, b) in enumerate(self.pairs):
                if a in pos and b in pos:
                    h = [multilinear_map(fused[pos[d]][0], F.softmax(fused[pos[d]][1], 1).detach()) for d in (a, b)]
                    out = self.discriminators[k](self.grls[k](torch.cat(h)))
                    terms.append(soft_label_domain_loss(out[:len(h[0])], out[len(h[0]):], self.hparams.disc_label_eps))
            loss_adv = torch.stack(terms).mean()
            loss = loss + self.hparams.w_cdafa * loss_adv
            logs["train/loss_transfer"] = loss_adv.detach()
        return loss, logs

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> None:
        domains = [(x, y) for x, y in batch["sources"]]
        ids = list(range(len(domains)))
        if self.current_epoch >= self.hparams.source_only_epochs and self.store.has_labels:
            xt, idx = batch["target"]
            yt = self.store[idx]
            if bool((yt < 0).any()):
                raise RuntimeError("a target training sample has no pseudo label: the target sampler should draw "
                                   "only UACR-selected samples")
            domains.append((xt, yt))
            ids.append(self.n_sources)
        self.zero_grad_groups("main", "discriminators")
        loss1, logs = self.domain_losses(domains, ids, adversarial=False)
        self.manual_backward(loss1)
        self.sam.perturb()
        self.zero_grad_groups("main")
        loss2, logs2 = self.domain_losses(domains, ids, adversarial=True)
        self.manual_backward(loss2)
        self.step_groups("discriminators")
        self.sam.restore()
        self.step_groups("main")
        if self.logging_step():
            self.log_train({"train/loss": loss2.detach(), **logs, "train/loss_transfer": logs2["train/loss_transfer"],
                            "train/grl_coeff": self.grls[0].coeff, "train/target_in_batch": float(len(ids) > self.n_sources)})

    def target_head_logits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, H, C)`` head logits of every target train sample (weak view, eval mode) and their indices."""
        loader = self.trainer.datamodule.target_pass_loader(eval_transform=True)
        with eval_mode(self):
            return predict_dataset(lambda x: (self.classifier(self.backbone(x)),), loader, self.device, indexed=True)

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.store.has_labels:  # resumed: train on the stored selection again
            self.trainer.datamodule.set_target_pool(self.store.valid.nonzero().flatten())

    def on_train_epoch_end(self) -> None:
        epoch = self.current_epoch
        if epoch + 1 >= (self.trainer.max_epochs or 0) and self.trainer.max_epochs not in (None, -1):
            return  # no next epoch to train on the selection
        z, idx = self.target_head_logits()
        rate = uacr_rate(epoch, self.pseudo_cfg["start_rate"], self.pseudo_cfg["update_rate"])
        chosen, labels = uacr_select(z, rate, self.num_classes)
        self.store.clear()
        if len(chosen):
            self.store.update(idx[chosen], labels)
            self.trainer.datamodule.set_target_pool(idx[chosen])
        self.log("train/uacr_selected", float(len(chosen)))

    def on_train_end(self) -> None:
        for enc in self.backbone.text_encoders():
            enc.save_cache()

    # ------------------------------------------------------------------ optimisation
    def optimizer_groups(self) -> dict[str, OptimGroup]:
        """``main``: the branches, extractors, fusion and heads at their own rates (``lr``); and
        ``discriminators``: one parameter group per domain pair (source pairs at ``lr.disc_sources``,
        source-target pairs at ``lr.disc_target``). Both use the configured optimiser (Adam)."""
        bb = self.backbone
        named = [("backbone", list(bb.branch_t.parameters()) + list(bb.branch_v.parameters())),
                 ("extractor", list(bb.extractor_t.parameters()) + list(bb.extractor_v.parameters())),
                 ("mlb", list(bb.fusion.parameters())),
                 ("heads", [*self.classifier.parameters(), *self.text_head.parameters(), *self.image_head.parameters()])]
        groups = []
        for name, params in named:
            params = [p for p in params if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": self.lrs[name], "name": name})
        disc_groups = [{"params": list(d.parameters()), "name": f"disc_{a}_{b}",
                        "lr": self.lrs["disc_target" if b == self.n_sources else "disc_sources"]}
                       for d, (a, b) in zip(self.discriminators, self.pairs)]
        self.sam = SAMPerturbation([p for g in groups for p in g["params"]], self.hparams.sam_rho)
        return {"main": OptimGroup(param_groups=groups), "discriminators": OptimGroup(param_groups=disc_groups)}
