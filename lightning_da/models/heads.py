"""Heads shared by methods: bottleneck, classifier and domain discriminator."""

from __future__ import annotations

from torch import nn


class Bottleneck(nn.Sequential):
    """``Linear(in, dim) [-> BatchNorm1d] [-> ReLU] [-> Dropout]``; ``dim=0`` is the identity.

    ``init="xavier"`` gives xavier-normal weights and zero bias (CDAN/RN ``init_weights``);
    ``"normal"`` gives N(0, 0.005^2) weights and bias 0.1 (CGDM); ``"default"`` keeps PyTorch's.
    """

    def __init__(self, in_features: int, dim: int = 256, batch_norm: bool = True, relu: bool = True,
                 dropout: float = 0.0, init: str = "default"):
        layers: list[nn.Module] = []
        if dim:
            linear = nn.Linear(in_features, dim)
            _init_linear(linear, init)
            layers.append(linear)
            if batch_norm:
                layers.append(nn.BatchNorm1d(dim))
            if relu:
                layers.append(nn.ReLU(inplace=True))
            if dropout:
                layers.append(nn.Dropout(dropout))
        super().__init__(*layers)
        self.out_features = dim or in_features


def _init_linear(linear: nn.Linear, init: str) -> None:
    if init == "xavier":
        nn.init.xavier_normal_(linear.weight)
        nn.init.zeros_(linear.bias)
    elif init == "normal":
        nn.init.normal_(linear.weight, 0.0, 0.005)
        nn.init.constant_(linear.bias, 0.1)
    elif init != "default":
        raise ValueError(f"unknown init {init!r}; choose one of default, xavier, normal")


class Classifier(nn.Linear):
    """The label predictor: one linear layer over the bottleneck features."""

    def __init__(self, in_features: int, num_classes: int, init: str = "default"):
        super().__init__(in_features, num_classes)
        _init_linear(self, init)


class DomainDiscriminator(nn.Sequential):
    """MLP that outputs one domain logit per row (source = 1, target = 0).

    ``Linear(in, h) -> [BN] -> ReLU -> [Dropout]`` repeated ``num_hidden`` times, then
    ``Linear(h, 1)``. ``batch_norm=True, dropout=0`` is the TLlib discriminator;
    ``batch_norm=False, dropout=0.5`` with hidden 1024 is CDAN's AdversarialNetwork (whose sigmoid
    lives in the loss here, as a logit).
    """

    def __init__(self, in_features: int, hidden: int = 1024, num_hidden: int = 2, batch_norm: bool = True,
                 dropout: float = 0.0):
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(num_hidden):
            layers.append(nn.Linear(width, hidden))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.ReLU(inplace=True))
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, 1))
        super().__init__(*layers)

    def forward(self, x):
        return super().forward(x).squeeze(-1)


class MLPClassifier(nn.Sequential):
    """Bi-classifier head: ``[Dropout -> Linear(h) -> BN -> ReLU]`` per hidden width, then
    ``[Dropout ->] Linear(C)``.

    CGDM's ResClassifier is ``hidden=(1000, 1000), dropout=0.5, dropout_last=False``; the CGDM/MCD
    LeNet classifier is ``hidden=(100, 100), dropout=0.5, dropout_last=True``. ``init="normal"``
    draws Linear weights and biases from N(0, 0.01^2) and BN weights from N(1, 0.01^2) with zero
    bias (CGDM's ``weights_init``, its ResNet heads); ``"xavier"`` gives every Linear xavier-normal
    weights and zero bias, BatchNorm kept at PyTorch's (CGDM's digits classifier);
    ``"default"`` keeps PyTorch's.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: tuple[int, ...] | list[int] = (1000, 1000),
                 batch_norm: bool = True, dropout: float = 0.5, dropout_last: bool = False, init: str = "default"):
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            if dropout:
                layers.append(nn.Dropout(dropout))
            layers.append(nn.Linear(width, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(nn.ReLU(inplace=True))
            width = h
        if dropout and dropout_last:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
        self.out_features = num_classes
        if init == "normal":
            tllib_head_init_(self)
        elif init == "xavier":
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    _init_linear(m, "xavier")
        elif init != "default":
            raise ValueError(f"unknown head init {init!r}; choose one of default, normal, xavier")


def tllib_head_init_(*modules: nn.Module) -> None:
    """TLlib-style head initialisation: Linear weights and biases ~ N(0, 0.01^2), BatchNorm1d
    weights ~ N(1, 0.01^2) with zero bias."""
    for module in modules:
        for m in module.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.normal_(m.bias, 0.0, 0.01)
            elif isinstance(m, nn.BatchNorm1d):
                nn.init.normal_(m.weight, 1.0, 0.01)
                nn.init.zeros_(m.bias)
