"""AdaBN (Li et al., "Revisiting Batch Normalization for Practical Domain Adaptation", 2016/2018)."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def mark_adabn(module: nn.Module) -> nn.Module:
    """Mark every BatchNorm layer of ``module`` for target re-estimation (the layers are unchanged)."""
    for m in module.modules():
        if isinstance(m, _BatchNorm):
            if not m.track_running_stats:
                raise ValueError(f"AdaBN needs running statistics, but {m} keeps none (track_running_stats=False)")
            m.adapt_to_target = True
    return module


def adabn_layers(module: nn.Module) -> list[_BatchNorm]:
    return [m for m in module.modules() if isinstance(m, _BatchNorm) and getattr(m, "adapt_to_target", False)]


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, forward: Callable[[torch.Tensor], object], batches: Iterable[torch.Tensor],
                    layers: list[_BatchNorm] | None = None) -> int:
    """AdaBN: replace the running statistics of the marked BatchNorm layers with the statistics of the
    target data, ``mu_t = E_t[x]`` and the unbiased ``sigma^2_t = Var_t[x]`` per channel over every
    sample and position of ``batches`` (exact sums in float64, not an average of batch variances).
    During the pass those layers normalise with batch statistics (as in training); every other layer
    (dropout included) runs in evaluation mode. Weights, biases and other buffers do not change, and
    every module's mode is restored after. Returns the number of samples seen.
    """
    layers = adabn_layers(model) if layers is None else layers
    if not layers:
        return 0
    sums = {m: [0, 0.0, 0.0] for m in layers}           # count, sum, sum of squares per layer

    def accumulate(layer, inputs):
        x = inputs[0].detach().double().transpose(0, 1).reshape(layer.num_features, -1)
        acc = sums[layer]
        acc[0] += x.shape[1]
        acc[1] = acc[1] + x.sum(1)
        acc[2] = acc[2] + x.square().sum(1)

    modes = {m: m.training for m in model.modules()}
    model.eval()
    hooks = [m.register_forward_pre_hook(accumulate) for m in layers]
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.momentum = 0.0                                   # the pass itself leaves the buffers alone
        m.train()
    seen = 0
    try:
        for x in batches:
            forward(x)
            seen += len(x)
    finally:
        for h in hooks:
            h.remove()
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    if seen == 0:
        raise ValueError("AdaBN got no target batches to estimate statistics from")
    for m in layers:
        count, total, total_sq = sums[m]
        mean = total / count
        m.running_mean.copy_(mean)
        m.running_var.copy_((total_sq - count * mean.square()) / max(count - 1, 1))
    return seen
