"""The domain-split contract and the shared machinery of the two-domain norms (DSBN, TransNorm, RN).

A domain-aware layer must know which rows of a training batch are source and which are target. A
method forwards ``[source; target]`` in one call inside ``domain_split(net, n_source)``; every
:class:`DomainAwareNorm` in ``net`` then sees ``self.n_source``. One that runs in training mode
without a split raises :class:`DomainSplitError`. In evaluation mode they use target statistics.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class DomainSplitError(RuntimeError):
    """A domain-aware norm ran without knowing where the source rows end (or with a split it cannot use)."""


class DomainAwareNorm(nn.Module):
    """Base for norms with per-domain statistics. ``n_source`` is set by :func:`domain_split`."""

    n_source: int | None = None

    def require_split(self, batch_size: int) -> int:
        if self.n_source is None:
            raise DomainSplitError(
                f"{type(self).__name__} got a training batch of {batch_size} rows without a domain split. "
                "Forward [source; target] inside lightning_da.norm.domain_split(net, n_source), or use norm=bn."
            )
        if not 0 < self.n_source < batch_size:
            raise DomainSplitError(f"{type(self).__name__}: domain split {self.n_source} does not fit a batch of {batch_size}")
        return self.n_source


def domain_aware_layers(module: nn.Module) -> list[DomainAwareNorm]:
    return [m for m in module.modules() if isinstance(m, DomainAwareNorm)]


@contextmanager
def domain_split(module: nn.Module, n_source: int):
    """Tell every domain-aware norm in ``module`` that the first ``n_source`` rows are source."""
    layers = domain_aware_layers(module)
    for m in layers:
        m.n_source = n_source
    try:
        yield
    finally:
        for m in layers:
            m.n_source = None


class TwoDomainNorm(DomainAwareNorm):
    """Per-channel normalisation with a source and a target set of running statistics.

    Buffers ``running_{mean,var}_{source,target}``; ``weight``/``bias`` are shared, shape ``(C,)``, or
    per domain, shape ``(2, C)`` (row 0 source, row 1 target). Inputs are ``(N, C, *)``. A BatchNorm
    state dict loads into it: the BN running statistics go to both domains and the BN affine to every
    row (:meth:`from_batchnorm` uses that path). Subclasses implement :meth:`train_forward` and may
    override :meth:`eval_forward` (default: BatchNorm with the target statistics and target affine).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 per_domain_affine: bool = False):
        super().__init__()
        self.num_features, self.eps, self.momentum, self.affine = num_features, eps, momentum, affine
        shape = (2, num_features) if per_domain_affine else (num_features,)
        self.weight = nn.Parameter(torch.ones(shape)) if affine else None
        self.bias = nn.Parameter(torch.zeros(shape)) if affine else None
        for d in ("source", "target"):
            self.register_buffer(f"running_mean_{d}", torch.zeros(num_features))
            self.register_buffer(f"running_var_{d}", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    @classmethod
    def from_batchnorm(cls, bn: _BatchNorm, **kwargs) -> "TwoDomainNorm":
        if not bn.track_running_stats:
            raise ValueError(f"cannot convert {bn}: it keeps no running statistics (track_running_stats=False)")
        layer = cls(bn.num_features, eps=bn.eps, momentum=bn.momentum, affine=bn.affine, **kwargs)
        ref = bn.running_mean
        layer.to(device=ref.device, dtype=ref.dtype)
        layer.load_state_dict(bn.state_dict())
        return layer

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "running_mean" in state_dict:  # a BatchNorm state dict: keep what BN does not have (RN gates)
            for name, value in [*self.named_parameters(recurse=False), *self.named_buffers(recurse=False)]:
                if not name.startswith(("running_", "weight", "bias", "num_batches")):
                    state_dict.setdefault(prefix + name, value.detach().clone())
        for stat in ("running_mean", "running_var"):
            bn_value = state_dict.pop(prefix + stat, None)
            if bn_value is not None:
                for d in ("source", "target"):
                    state_dict.setdefault(f"{prefix}{stat}_{d}", bn_value.clone())
        if self.affine:
            for name in ("weight", "bias"):
                value = state_dict.get(prefix + name)
                own = getattr(self, name)
                if value is not None and value.shape != own.shape and value.shape == own.shape[-1:]:
                    state_dict[prefix + name] = value.expand_as(own).clone()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}"

    # ------------------------------------------------------------------ pieces
    def affine_rows(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(weight, bias)`` as ``(2, C)`` (source row, target row), or None without affine."""
        if not self.affine:
            return None, None
        return self.weight.expand(2, -1), self.bias.expand(2, -1)

    @staticmethod
    def domain_views(x: torch.Tensor, n_source: int) -> list[torch.Tensor]:
        """``[source rows, target rows]``; equal halves come as one ``(2, n, C, ...)`` view (one kernel
        per statistic and no slice-backward copies), unequal ones as two tensors."""
        if 2 * n_source == len(x):
            return [x.view(2, n_source, *x.shape[1:])]
        return [h.unsqueeze(0) for h in torch.split(x, [n_source, len(x) - n_source])]

    @classmethod
    def moments(cls, x: torch.Tensor, n_source: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-domain ``(mean, biased var, unbiased var)``, each ``(2, C)``, of ``x = [source (n_source);
        target]``, computed in float32."""
        means, variances = [], []
        for v in cls.domain_views(x, n_source):
            v, dims = v.float(), [1, *range(3, v.ndim)]
            mean = v.mean(dims)
            # two-pass variance around the (detached) mean: the same value and gradient as var_mean, since
            # the centred values sum to zero, at a fraction of the CPU kernel's cost (Welford over strided dims)
            centred = v - mean.detach().view(len(mean), 1, -1, *(1,) * (v.ndim - 3))
            means.append(mean)
            variances.append(centred.square().mean(dims))
        mean, var = torch.cat(means), torch.cat(variances)
        per_channel = x[0, 0].numel()
        counts = (n_source * per_channel, (len(x) - n_source) * per_channel)   # Python numbers: no copy to the device
        unbiased = torch.cat([var[d:d + 1] * (n / max(n - 1, 1)) for d, n in enumerate(counts)])
        return mean, var, unbiased

    @staticmethod
    def affine_per_domain(x: torch.Tensor, n_source: int, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """``x * scale[d] + shift[d]`` per channel, ``d`` = 0 on the source rows and 1 on the target rows;
        ``scale``, ``shift`` are ``(2, C)``. Equal halves take one fused op on a view (no concatenation)."""
        tail = (1,) * (x.ndim - 2)
        scale, shift = scale.to(x.dtype).view(2, 1, -1, *tail), shift.to(x.dtype).view(2, 1, -1, *tail)
        views = TwoDomainNorm.domain_views(x, n_source)
        if len(views) == 1:
            return torch.addcmul(shift, views[0], scale).view(x.shape)
        return torch.cat([torch.addcmul(shift[d], v[0], scale[d]) for d, v in enumerate(views)])

    def scale_shift(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-domain ``scale = gamma / sqrt(var + eps)`` and ``shift = beta - mean * scale`` (``(2, C)``)."""
        scale = torch.rsqrt(var + self.eps)
        weight, bias = self.affine_rows()
        if weight is not None:
            scale = scale * weight
        shift = -mean * scale
        return scale, shift if bias is None else shift + bias

    @torch.no_grad()
    def next_average_factor(self) -> float:
        """Count one more training batch and return its running-statistics weight: ``momentum``, or
        ``1 / batches`` (a cumulative average) for ``momentum=None``, as BatchNorm does."""
        self.num_batches_tracked += 1
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

    @torch.no_grad()
    def update_running(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        """EMA (or cumulative average for ``momentum=None``) of per-domain ``(2, C)`` statistics."""
        m = self.next_average_factor()
        for d, name in enumerate(("source", "target")):
            getattr(self, f"running_mean_{name}").lerp_(mean[d].to(self.running_mean_source.dtype), m)
            getattr(self, f"running_var_{name}").lerp_(var[d].to(self.running_var_source.dtype), m)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) got input of shape {tuple(x.shape)}")
        if self.training:
            return self.train_forward(x, self.require_split(len(x)))
        return self.eval_forward(x)

    def train_forward(self, x: torch.Tensor, n_source: int) -> torch.Tensor:
        raise NotImplementedError

    def eval_forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.affine_rows()
        return torch.nn.functional.batch_norm(
            x, self.running_mean_target, self.running_var_target, None if weight is None else weight[1],
            None if bias is None else bias[1], False, 0.0, self.eps)
