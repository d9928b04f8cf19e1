"""LeNet-style CNNs for digits, trained from scratch.

* ``LeNet`` (the DANN/CDAN/TLlib digit network): conv5(c->20) -> maxpool2 -> ReLU -> conv5(20->50)
  -> Dropout2d(0.5) -> maxpool2 -> ReLU -> flatten. 28 px input gives 50*4*4 = 800 features,
  32 px gives 50*5*5 = 1250.
* ``LeNet(fc=500)`` (backbone ``lenet_tllib``, TLlib's ``LeNet``): the same convolutions followed by
  TLlib's fully connected tail Linear(800, 500) -> ReLU -> Dropout(0.5), 500 features. TLlib's methods
  put their own bottleneck (e.g. DANN/MCC: Linear(500, 256) -> BN -> ReLU) on top of it, while our
  shared digits protocol (``experiment=digits/_protocol``) uses this tail *as* the bottleneck.
* ``LeNetBN`` (the CGDM/SHOT digit encoder): conv5(c->32) -> BN -> ReLU -> maxpool2 -> conv5(32->48)
  -> BN -> ReLU -> maxpool2 -> flatten. 28 px gives 48*4*4 = 768, 32 px gives 48*5*5 = 1200.
* ``DTN`` (SHOT's SVHN->MNIST network, 32 px RGB): three conv5 stride-2 blocks with BN, Dropout2d
  and ReLU, 256*4*4 = 4096 features.

Each exposes ``out_features`` as the backbone contract requires.
"""

from __future__ import annotations

from torch import nn


def _conv_out(size: int, kernel: int = 5, pool: int = 2) -> int:
    return (size - kernel + 1) // pool


class LeNet(nn.Module):
    def __init__(self, in_channels: int = 1, input_size: int = 28, fc: int = 0):
        super().__init__()
        side = _conv_out(_conv_out(input_size))
        layers = [
            nn.Conv2d(in_channels, 20, 5), nn.MaxPool2d(2), nn.ReLU(inplace=True),
            nn.Conv2d(20, 50, 5), nn.Dropout2d(0.5), nn.MaxPool2d(2), nn.ReLU(inplace=True),
            nn.Flatten(),
        ]
        if fc:
            layers += [nn.Linear(50 * side * side, fc), nn.ReLU(inplace=True), nn.Dropout(0.5)]
        self.features = nn.Sequential(*layers)
        self.out_features = fc or 50 * side * side

    def forward(self, x):
        return self.features(x)


class LeNetBN(nn.Module):
    def __init__(self, in_channels: int = 1, input_size: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 48, 5), nn.BatchNorm2d(48), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        side = _conv_out(_conv_out(input_size))
        self.out_features = 48 * side * side

    def forward(self, x):
        return self.features(x)


class DTN(nn.Module):
    def __init__(self, in_channels: int = 3, input_size: int = 32):
        super().__init__()
        if input_size != 32:
            raise ValueError(f"DTN expects 32x32 input, got input_size={input_size}")

        def block(cin, cout, p):
            return [nn.Conv2d(cin, cout, 5, stride=2, padding=2), nn.BatchNorm2d(cout), nn.Dropout2d(p), nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*block(in_channels, 64, 0.1), *block(64, 128, 0.3), *block(128, 256, 0.5), nn.Flatten())
        self.out_features = 256 * 4 * 4

    def forward(self, x):
        return self.features(x)
