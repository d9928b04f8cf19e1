"""The entropy of the predictions (losses/entropy.py) on hand-worked values."""

import math

import pytest
import torch

from lightning_da.losses import entropy


def test_entropy_values():
    z = torch.tensor([[0.0, 0.0], [10.0, -10.0]])
    h = entropy(z, reduction="none")
    assert h[0].item() == pytest.approx(math.log(2), abs=1e-4)
    assert h[1].item() == pytest.approx(0.0, abs=1e-3)
