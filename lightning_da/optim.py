"""Optimiser parameter groups with learning-rate multipliers, and the DA learning-rate schedules."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


#: ``lr_mult`` key of the norm layers' gate parameters (RN's lambda), grouped apart from their module
NORM_GATES = "norm_gates"


def param_groups(modules: Sequence[tuple[str, nn.Module]], base_lr: float, lr_mult: dict[str, float] | None = None,
                 options: dict[str, dict] | None = None) -> list[dict]:
    """One group per named module with ``lr = base_lr * lr_mult.get(name, 1)``; frozen and empty
    modules are skipped; a multiplier of 0 leaves the module out of the optimiser. Gate parameters of
    norm layers (anything with ``gate_parameters()``, i.e. RN) form one more group, ``norm_gates``,
    with ``lr_mult["norm_gates"]`` (default 1, as the RN code's ``--lr_mult``) wherever they live.
    ``options`` overrides the optimiser's own settings for a group by name (e.g. TLlib's AFN:
    ``{"backbone": {"momentum": 0.0}}``)."""
    lr_mult, options = dict(lr_mult or {}), dict(options or {})
    for what, given in (("lr_mult", lr_mult), ("group_options", options)):
        unknown = sorted(set(given) - {n for n, _ in modules} - {NORM_GATES})
        if unknown:
            raise ValueError(f"{what} names unknown modules {unknown}; the method's modules are {[n for n, _ in modules]}")
    gates = [p for _, module in modules for m in module.modules() if hasattr(m, "gate_parameters")
             for p in m.gate_parameters() if p.requires_grad]
    gate_ids = {id(p) for p in gates}
    groups = []
    for name, module in [*modules, (NORM_GATES, None)]:
        params = gates if module is None else [p for p in module.parameters() if p.requires_grad and id(p) not in gate_ids]
        mult = float(lr_mult.get(name, 1.0))
        if params and mult > 0:
            groups.append({"params": params, "lr": base_lr * mult, "name": name, **dict(options.get(name) or {})})
    return groups


def inv_schedule(optimizer: torch.optim.Optimizer, gamma: float = 0.001, power: float = 0.75) -> LambdaLR:
    """The ``inv`` schedule of Caffe / CDAN / RN: ``lr_i = lr_0 (1 + gamma * i)^(-power)`` per step."""
    return LambdaLR(optimizer, lambda i: (1.0 + gamma * i) ** (-power))


def constant_schedule(optimizer: torch.optim.Optimizer) -> LambdaLR:
    return LambdaLR(optimizer, lambda i: 1.0)


def progress_schedule(optimizer: torch.optim.Optimizer, total_steps: int, alpha: float = 10.0, beta: float = 0.75) -> LambdaLR:
    """DANN's annealing ``lr_p = lr_0 / (1 + alpha p)^beta`` with progress ``p = i / total_steps``."""
    return LambdaLR(optimizer, lambda i: (1.0 + alpha * i / max(total_steps, 1)) ** (-beta))


def poly_schedule(optimizer: torch.optim.Optimizer, total_steps: int, power: float = 0.9, lowest: float = 0.0) -> LambdaLR:
    """Poly decay per group, floored: ``lr_i = max(lr_0 (1 - i / total_steps)^power, lowest)`` (M2CAN)."""
    lambdas = []
    for group in optimizer.param_groups:
        base = group.get("initial_lr", group["lr"])
        floor = lowest / base if base > 0 else 0.0
        lambdas.append(lambda i, floor=floor: max(max(1.0 - i / max(total_steps, 1), 0.0) ** power, floor))
    return LambdaLR(optimizer, lambdas)


class SAMPerturbation:
    """Sharpness-aware minimisation (Foret et al. 2021) around any base optimiser, non-adaptive:

    1. ``perturb()``: with the gradients g of the first pass, ``e = rho g / (||g||_2 + 1e-12)``
       (one norm over every parameter that has a gradient) and ``w <- w + e``;
    2. the caller zeroes the gradients and back-propagates the loss at ``w + e``;
    3. ``restore()``: ``w <- w - e``; the caller then steps the base optimiser, which applies the
       gradients taken at the perturbed point to the original weights.

    ``rho`` is passed explicitly (the original reached the base groups through shared dicts).
    """

    def __init__(self, params, rho: float = 0.05):
        if rho < 0:
            raise ValueError(f"SAM rho must be >= 0, got {rho}")
        self.params, self.rho = [p for p in params if p.requires_grad], rho
        self._e: list[tuple[torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def perturb(self) -> torch.Tensor:
        """Move to ``w + e``; returns ``||g||``."""
        if self._e:
            raise RuntimeError("SAMPerturbation.perturb called twice without restore")
        with_grad = [p for p in self.params if p.grad is not None]
        if not with_grad:
            raise RuntimeError("SAM: no parameter has a gradient; back-propagate the first pass before perturb()")
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in with_grad]))
        scale = self.rho / (norm + 1e-12)
        for p in with_grad:
            e = p.grad * scale.to(p.grad.dtype)
            p.add_(e)
            self._e.append((p, e))
        return norm

    @torch.no_grad()
    def restore(self) -> None:
        """Back to ``w`` (gradients untouched)."""
        for p, e in self._e:
            p.sub_(e)
        self._e = []
