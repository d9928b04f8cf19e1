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

Prediction is ``argmax(F1 + F2)`` (sum of logits). G and the heads have their own optimisers:
``optimizer`` for the heads and ``generator_optimizer`` (default: the same) for G. In step B, G
runs without gradients (its gradients were discarded in the original code anyway).
Subclasses add terms to each step through :meth:`step_terms`; configured ``extra_losses`` are
added to step A on both heads' target logits.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from lightning_da.losses.bi_classifier import classifier_discrepancy
from lightning_da.methods.base import DAMethod
from lightning_da.models.heads import MLPClassifier
from lightning_da.data.batches import target_indices
from lightning_da.optim import NORM_GATES, param_groups


class MCD(DAMethod):
    automatic_optimization = False
    hparams_ignore = ("generator_optimizer",)
    unused_options = ("group_options",)

    def __init__(self, *args, num_k: int = 4, w_dis: float = 1.0, head: dict | None = None,
                 generator_optimizer=None, domain_forward: str = "joint", **kwargs):
        if domain_forward not in ("joint", "separate"):
            raise ValueError(f"domain_forward must be 'joint' or 'separate', got {domain_forward!r}")
        super().__init__(*args, **kwargs)
        d, c = self.bottleneck.out_features, self.num_classes
        self.classifier = MLPClassifier(d, c, **(head or {}))
        self.classifier2 = MLPClassifier(d, c, **(head or {}))
        self.needs = dataclasses.replace(self.needs, domain_split=domain_forward == "joint")
        self.domain_forward = domain_forward
        self.num_k, self.w_dis = num_k, w_dis
        self.generator_optimizer_factory = generator_optimizer

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

    def step_a(self, batch, opt_g, opt_f) -> dict:
        xs, ys, xt, ns = self.step_inputs(batch, "A")
        f, z1, z2 = self.forward_heads(xs, xt)
        loss_cls = F.cross_entropy(z1[:ns], ys) + F.cross_entropy(z2[:ns], ys)
        extra, logs = self.step_terms("A", f, z1, z2, ns, batch)
        if self.extra:  # configured extra_losses act on both heads' target logits in step A
            extra = extra + self.extra(z1[ns:])[0] + self.extra(z2[ns:])[0]
        opt_g.zero_grad()
        opt_f.zero_grad()
        self.manual_backward(loss_cls + extra)
        opt_g.step()
        opt_f.step()
        return {"train/loss_cls": loss_cls.detach(), **logs}

    def step_b(self, batch, opt_f) -> dict:
        xs, ys, xt, ns = self.step_inputs(batch, "B")
        f, z1, z2 = self.forward_heads(xs, xt, generator_grad=False)
        disc = classifier_discrepancy(z1[ns:], z2[ns:])
        extra, logs = self.step_terms("B", f, z1, z2, ns, batch)
        loss = F.cross_entropy(z1[:ns], ys) + F.cross_entropy(z2[:ns], ys) - self.w_dis * disc + extra
        opt_f.zero_grad()
        self.manual_backward(loss)
        opt_f.step()
        return {"train/discrepancy_heads": disc.detach(), **logs}

    def step_c(self, batch, opt_g) -> dict:
        xs, _, xt, ns = self.step_inputs(batch, "C")
        logs = {}
        for _ in range(self.num_k):
            f, z1, z2 = self.forward_heads(xs, xt)
            disc = classifier_discrepancy(z1[ns:], z2[ns:])
            extra, logs = self.step_terms("C", f, z1, z2, ns, batch)
            opt_g.zero_grad()
            self.manual_backward(self.w_dis * disc + extra)
            opt_g.step()
        return {"train/loss_transfer": disc.detach(), **logs}

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opt_g, opt_f = self.optimizers()
        logs = self.step_a(batch, opt_g, opt_f)
        logs.update(self.step_b(batch, opt_f))
        logs.update(self.step_c(batch, opt_g))
        for scheduler in self.scheduler_list():
            scheduler.step()
        if self.logging_step():
            logs["train/loss"] = logs["train/loss_cls"] + logs["train/loss_transfer"]
            self.log_train(logs)

    # ------------------------------------------------------------------ optimisers
    def generator_modules(self) -> list[tuple[str, torch.nn.Module]]:
        return [("backbone", self.backbone), ("bottleneck", self.bottleneck)]

    def configure_optimizers(self):
        heads = [("classifier", self.classifier), ("classifier2", self.classifier2)]
        unknown = sorted(set(self.lr_mult) - {n for n, _ in [*self.generator_modules(), *heads]} - {NORM_GATES})
        if unknown:
            raise ValueError(f"lr_mult names unknown modules {unknown}; {type(self).__name__} optimises "
                             f"{[n for n, _ in [*self.generator_modules(), *heads]]}")
        base_lr = self.optimizer_factory.keywords["lr"]
        g_factory = self.generator_optimizer_factory or self.optimizer_factory
        g_lr = g_factory.keywords.get("lr", base_lr)
        opt_g = g_factory(param_groups(self.generator_modules(), g_lr, self._known_mults(self.generator_modules())))
        opt_f = self.optimizer_factory(param_groups(heads, base_lr, self._known_mults(heads)))
        if self.scheduler_factory is None:
            return [opt_g, opt_f]
        schedulers = [self.make_scheduler(opt) for opt in (opt_g, opt_f)]
        return [opt_g, opt_f], schedulers

    def _known_mults(self, modules) -> dict:
        names = {n for n, _ in modules} | {NORM_GATES}
        return {k: v for k, v in self.lr_mult.items() if k in names}
