"""Optimiser parameter groups with learning-rate multipliers, and the DA learning-rate schedules."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR


#: ``lr_mult`` key of the norm layers' gate parameters (RN's lambda), grouped apart from their module
NORM_GATES = "norm_gates"


def param_groups(modules: Sequence[tuple[str, nn.Module]], base_lr: float, lr_mult: dict[str, float] | None = None) -> list[dict]:
    """One group per named module with ``lr = base_lr * lr_mult.get(name, 1)``; frozen and empty
    modules are skipped; a multiplier of 0 leaves the module out of the optimiser. Gate parameters of
    norm layers (anything with ``gate_parameters()``, i.e. RN) form one more group, ``norm_gates``,
    with ``lr_mult["norm_gates"]`` (default 1, as the RN code's ``--lr_mult``) wherever they live."""
    lr_mult = dict(lr_mult or {})
    unknown = sorted(set(lr_mult) - {n for n, _ in modules} - {NORM_GATES})
    if unknown:
        raise ValueError(f"lr_mult names unknown modules {unknown}; the method's modules are {[n for n, _ in modules]}")
    gates = [p for _, module in modules for m in module.modules() if hasattr(m, "gate_parameters")
             for p in m.gate_parameters() if p.requires_grad]
    gate_ids = {id(p) for p in gates}
    groups = []
    for name, module in [*modules, (NORM_GATES, None)]:
        params = gates if module is None else [p for p in module.parameters() if p.requires_grad and id(p) not in gate_ids]
        mult = float(lr_mult.get(name, 1.0))
        if params and mult > 0:
            groups.append({"params": params, "lr": base_lr * mult, "name": name})
    return groups


def inv_schedule(optimizer: torch.optim.Optimizer, gamma: float = 0.001, power: float = 0.75) -> LambdaLR:
    """The ``inv`` schedule of Caffe / CDAN / RN: ``lr_i = lr_0 (1 + gamma * i)^(-power)`` per step."""
    return LambdaLR(optimizer, lambda i: (1.0 + gamma * i) ** (-power))


def constant_schedule(optimizer: torch.optim.Optimizer) -> LambdaLR:
    return LambdaLR(optimizer, lambda i: 1.0)


def progress_schedule(optimizer: torch.optim.Optimizer, total_steps: int, alpha: float = 10.0, beta: float = 0.75) -> LambdaLR:
    """DANN's annealing ``lr_p = lr_0 / (1 + alpha p)^beta`` with progress ``p = i / total_steps``."""
    return LambdaLR(optimizer, lambda i: (1.0 + alpha * i / max(total_steps, 1)) ** (-beta))
