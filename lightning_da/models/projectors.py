"""Heterogeneous-DA parts: one feature projector per domain into a common space, the shared
classifier and the single-layer domain discriminator of SSAN.

Every ``Linear`` here can be initialised with weights and biases ~ N(0, ``init_std``^2) (SSAN:
std 0.01); ``init_std=None`` keeps PyTorch's default initialisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def normal_linear_init_(module: nn.Module, std: float | None) -> None:
    """Draw every ``Linear`` weight and bias of ``module`` from N(0, std^2) (``None``: keep)."""
    if std is None:
        return
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, std)
            nn.init.normal_(m.bias, 0.0, std)


class Projector(nn.Sequential):
    """``double``: ``Linear(d, (d + c) // 2) -> LeakyReLU(0.2) -> Linear(., c) -> LeakyReLU(0.2)``;
    ``single``: ``Linear(d, c) -> LeakyReLU(0.2)``. The output is L2-normalised per row when
    ``normalize`` (SSAN)."""

    def __init__(self, in_features: int, out_features: int = 256, layer: str = "double", normalize: bool = True):
        if layer == "double":
            hidden = (in_features + out_features) // 2
            layers = [nn.Linear(in_features, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, out_features), nn.LeakyReLU(0.2)]
        elif layer == "single":
            layers = [nn.Linear(in_features, out_features), nn.LeakyReLU(0.2)]
        else:
            raise ValueError(f"projector layer must be double or single, not {layer!r}")
        super().__init__(*layers)
        self.normalize, self.out_features = normalize, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = super().forward(x)
        return F.normalize(f, p=2, dim=1) if self.normalize else f


class DomainProjectors(nn.Module):
    """One :class:`Projector` per domain, picked by the domain's name, never by the input width
    (SSAN's original picks by width, which breaks when both domains have the same dimension).

    ``forward(x)`` projects target rows: at evaluation the model classifies target samples.

    ``input_bases`` (domain -> ``Q``, ``d x n`` with orthonormal columns; from
    :class:`~lightning_da.data.full_batch.FullBatchDataModule` with ``row_space=True``): that domain's
    rows arrive as row-space coordinates ``x Q``. Every layer is built and initialised at the full
    width ``d`` as without it (the same random draws, the same hidden widths), then the first
    ``Linear``'s weight ``W`` (``h x d``) becomes ``W Q`` (``h x n``): ``(x Q)(W Q)^T = x W^T`` for every
    row of the span. An ``int`` n instead of ``Q`` builds the n-input layer uninitialised (its weights
    come from a checkpoint).
    """

    def __init__(self, input_dims: dict[str, int], out_features: int = 256, layer: str = "double",
                 normalize: bool = True, init_std: float | None = 0.01, input_bases: dict | None = None):
        super().__init__()
        if not input_dims:
            raise ValueError("DomainProjectors needs input_dims, e.g. {source: 800, target: 4096}")
        self.projectors = nn.ModuleDict({d: Projector(n, out_features, layer, normalize) for d, n in input_dims.items()})
        normal_linear_init_(self, init_std)
        for domain, basis in (input_bases or {}).items():
            self._first_layer_on_row_space(domain, basis)
        self.out_features = out_features

    def _first_layer_on_row_space(self, domain: str, basis: torch.Tensor | int) -> None:
        if domain not in self.projectors:
            raise ValueError(f"input_bases names domain {domain!r}, which has no projector ({sorted(self.projectors)})")
        first = self.projectors[domain][0]
        from_checkpoint = isinstance(basis, int)
        if not from_checkpoint and basis.shape[0] != first.in_features:
            raise ValueError(f"the {domain} row-space basis is {tuple(basis.shape)}, expected ({first.in_features}, n)")
        width = basis if from_checkpoint else basis.shape[1]
        reduced = nn.utils.skip_init(nn.Linear, width, first.out_features)  # no random draw: values set here or loaded
        with torch.no_grad():
            if not from_checkpoint:
                reduced.weight.copy_(first.weight.double() @ basis.double())
            reduced.bias.copy_(first.bias)
        self.projectors[domain][0] = reduced

    def to_full_width(self, domain: str, basis: torch.Tensor) -> None:
        """Undo the row-space input of ``domain`` for use on raw rows (``lightning_da.load``): the first
        layer ``W Q`` (``h x n``) becomes ``(W Q) Q^T`` (``h x d``, computed in float64), so
        ``x (W Q Q^T)^T = (x Q)(W Q)^T``: on rows of the span the same function as before."""
        first = self.projectors[domain][0]
        if basis.shape[1] != first.in_features:
            raise ValueError(f"the {domain} basis is {tuple(basis.shape)}, but its projector takes {first.in_features} inputs")
        full = nn.utils.skip_init(nn.Linear, basis.shape[0], first.out_features)
        with torch.no_grad():
            full.weight.copy_(first.weight.double() @ basis.double().T)
            full.bias.copy_(first.bias)
        self.projectors[domain][0] = full.to(first.weight.device)

    def forward(self, x: torch.Tensor, domain: str = "target") -> torch.Tensor:
        projector = self.projectors[domain]
        if x.shape[1] != projector[0].in_features:
            raise ValueError(f"{domain} rows are {x.shape[1]}-d but the {domain} projector takes {projector[0].in_features}-d input"
                             " (a model trained with data.row_space=true takes row-space coordinates)")
        return projector(x)


class HDAClassifier(nn.Sequential):
    """The shared classifier ``Linear(c, C)``, followed by ``LeakyReLU(0.2)`` on the logits when
    ``logit_leaky_relu`` (an SSAN quirk, kept by default)."""

    def __init__(self, in_features: int, num_classes: int, logit_leaky_relu: bool = True, init_std: float | None = 0.01):
        super().__init__(nn.Linear(in_features, num_classes), *([nn.LeakyReLU(0.2)] if logit_leaky_relu else []))
        normal_linear_init_(self, init_std)
        self.out_features = num_classes


class LinearDiscriminator(nn.Linear):
    """SSAN's domain discriminator ``Linear(c, 1)``, returning the logit (the sigmoid lives in the
    loss as ``binary_cross_entropy_with_logits``); source = 1, target = 0."""

    def __init__(self, in_features: int, init_std: float | None = 0.01):
        super().__init__(in_features, 1)
        normal_linear_init_(self, init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x).squeeze(-1)
