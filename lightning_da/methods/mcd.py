"""MCD: maximum classifier discrepancy (Saito et al., CVPR 2018), the bi-classifier base of CGDM.

A generator G (backbone + bottleneck) feeds two classifier heads F1, F2. With
``d(p, q) = mean_{i,c} |p_ic - q_ic|`` on the target softmaxes, every batch runs three steps
(Lightning manual optimisation; each step forwards ``[x_s; x_t]`` afresh):

* A (G, F1, F2):  ``CE(F1(G(x_s)), y_s) + CE(F2(G(x_s)), y_s)``
* B (F1, F2):     ``CE_s(F1) + CE_s(F2) - w_dis * d(F1(G(x_t)), F2(G(x_t)))`` with G fixed
* C (G), ``num_k`` times: ``w_dis * d(F1(G(x_t)), F2(G(x_t)))`` with F1, F2 fixed

``domain_forward`` picks how a step forwards the two domains. ``"joint"`` (default; CGDM's code,
which this class is the base of) runs G, F1 and F2 once on ``[x_s; x_t]`` in every step, so every
BatchNorm normalises with statistics of the mixed batch. ``"separate"`` (Saito's digits solver) runs
them once per domain and only on the domains a step uses (:meth:`step_domains`: A source only, B
both, C target only, unless a subclass or ``extra_losses`` needs more), so in training every
BatchNorm, in G and in the heads, uses per-domain batch statistics, and the running statistics used
at evaluation lean to the target (the last updates of each batch are C's). A domain-aware ``norm``
(dsbn/transnorm/rn) needs ``"joint"``: it splits the joint batch itself.

Prediction is ``argmax(F1 + F2)`` (sum of logits). G and the heads are two named optimiser groups
(:meth:`optimizer_groups`): ``F`` with ``optimizer`` and ``G`` with ``generator_optimizer`` (default:
the same); each step is "this loss updates these groups" (:meth:`~lightning_da.methods.base.DAMethod.update`),
and each group's schedule steps once per batch. In step B, G runs without gradients (its gradients
were discarded in the original code anyway).
Subclasses add terms to each step through :meth:`step_terms`; configured ``extra_losses`` are
added to steps A and B on both heads' target logits (TLlib's MCD adds its class-balance term,
``extra_losses.class_balance``, to both: ``experiment=digits_tllib/mcd``).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from lightning_da.data.batches import target_indices
from lightning_da.losses.bi_classifier import classifier_discrepancy
from lightning_da.methods.base import DAMethod, OptimGroup
from lightning_da.models.heads import MLPClassifier


class MCD(DAMethod):
    automatic_optimization = False
    hparams_ignore = ("generator_optimizer",)

    def __init__(self, *args, num_k: int = 4, w_dis: float = 1.0, head: dict | None = None,
                 generator_optimizer=None, domain_forward: str = "joint", **kwargs):
        if domain_forward not in ("joint", "separate"):
            raise ValueError(f"domain_forward must be 'joint' or 'separate', got {domain_forward!r}")
        super().__init__(*args, **kwargs)
        d, c = self.bottleneck.out_features, self.num_classes
        self.classifier = MLPClassifier(d, c, **(head or {}))
        self.classifier2 = MLPClassifier(d, c, **(head or {}))
        self.domain_forward = domain_forward
        self.num_k, self.w_dis = num_k, w_dis
        self.generator_optimizer_factory = generator_optimizer

    @classmethod
    def needs_for(cls, options):
        # "separate" forwards each domain on its own: there is no joint batch to split
        return dataclasses.replace(cls.needs, domain_split=options.get("domain_forward", "joint") == "joint")

    def domain_split_refusal(self) -> str:
        return (f"{type(self).__name__} with domain_forward=separate already normalises each domain on its own and "
                "cannot use a domain-aware norm (dsbn/transnorm/rn); use domain_forward=joint or norm=bn")

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features) + self.classifier2(features)

    # ------------------------------------------------------------------ the three steps
    def step_domains(self, step: str) -> tuple[bool, bool]:
        """``(source, target)``: which domains step ``"A"``, ``"B"`` or ``"C"`` forwards when
        ``domain_forward="separate"`` (Saito's solver: A source, B both, C target; step A also
        forwards the target when ``extra_losses`` act on it). ``"joint"`` always forwards both."""
        if self.domain_forward == "joint":
            return True, True
        return {"A": (True, bool(self.extra)), "B": (True, True), "C": (False, True)}[step]

    def forward_heads(self, xs, xt, generator_grad: bool = True):
        """Features and both heads' logits of ``[x_s; x_t]``: one call on the joint batch (domain split
        declared), or with ``domain_forward="separate"`` one call per domain, where ``xs`` or ``xt``
        may be ``None`` (that domain is skipped)."""
        with torch.set_grad_enabled(generator_grad and torch.is_grad_enabled()):
            fs = ([self.features_domains(xs, xt)] if self.domain_forward == "joint"
                  else [self.features(x) for x in (xs, xt) if x is not None])
        return (torch.cat(fs), torch.cat([self.classifier(f) for f in fs]),
                torch.cat([self.classifier2(f) for f in fs]))

    def step_terms(self, step: str, f, z1, z2, ns: int, batch: dict) -> tuple[torch.Tensor, dict]:
        """Extra loss of step ``"A"``, ``"B"`` or ``"C"`` (MCD adds none; CGDM adds its terms)."""
        return f.new_zeros(()), {}

    def step_inputs(self, batch: dict, step: str):
        """``x_s, y_s, x_t`` of a ``{"source": (x, y), "target": (x, idx)}`` batch, with the inputs of
        a domain that ``step`` does not forward replaced by ``None``, and the number of source rows
        the step's outputs start with."""
        (xs, ys), (xt, _) = batch["source"], target_indices(batch["target"])
        use_s, use_t = self.step_domains(step)
        return (xs if use_s else None), ys, (xt if use_t else None), (len(ys) if use_s else 0)

    def step_a(self, batch) -> dict:
        xs, ys, xt, ns = self.step_inputs(batch, "A")
        f, z1, z2 = self.forward_heads(xs, xt)
        loss_cls = F.cross_entropy(z1[:ns], ys) + F.cross_entropy(z2[:ns], ys)
        extra, logs = self.step_terms("A", f, z1, z2, ns, batch)
        # configured extra_losses act on both heads' target logits in steps A and B (not logged: MCD logs its steps' terms)
        loss = loss_cls + self.with_extra_losses(extra, None, z1[ns:], z2[ns:])
        self.update(loss, "G", "F")
        return {"train/loss_cls": loss_cls.detach(), **logs}

    def step_b(self, batch) -> dict:
        xs, ys, xt, ns = self.step_inputs(batch, "B")
        f, z1, z2 = self.forward_heads(xs, xt, generator_grad=False)
        disc = classifier_discrepancy(z1[ns:], z2[ns:])
        extra, logs = self.step_terms("B", f, z1, z2, ns, batch)
        loss = F.cross_entropy(z1[:ns], ys) + F.cross_entropy(z2[:ns], ys) - self.w_dis * disc + extra
        loss = self.with_extra_losses(loss, None, z1[ns:], z2[ns:])  # as in step A
        self.update(loss, "F")
        return {"train/discrepancy_heads": disc.detach(), **logs}

    def step_c(self, batch) -> dict:
        xs, _, xt, ns = self.step_inputs(batch, "C")
        logs = {}
        for _ in range(self.num_k):
            f, z1, z2 = self.forward_heads(xs, xt)
            disc = classifier_discrepancy(z1[ns:], z2[ns:])
            extra, logs = self.step_terms("C", f, z1, z2, ns, batch)
            self.update(self.w_dis * disc + extra, "G")
        return {"train/loss_transfer": disc.detach(), **logs}

    def training_step(self, batch: dict, batch_idx: int) -> None:
        logs = self.step_a(batch)
        logs.update(self.step_b(batch))
        logs.update(self.step_c(batch))
        if self.logging_step():
            logs["train/loss"] = logs["train/loss_cls"] + logs["train/loss_transfer"]
            self.log_train(logs)

    # ------------------------------------------------------------------ optimisers
    def generator_modules(self) -> list[tuple[str, torch.nn.Module]]:
        return [("backbone", self.backbone), ("bottleneck", self.bottleneck)]

    def optimizer_groups(self) -> dict[str, OptimGroup]:
        """``G`` (the generator, ``generator_optimizer``) and ``F`` (both heads, ``optimizer``)."""
        return {"G": OptimGroup(self.generator_modules(), optimizer=self.generator_optimizer_factory),
                "F": OptimGroup([("classifier", self.classifier), ("classifier2", self.classifier2)])}
