"""Weak and strong views of a target sample, for FixMatch-style consistency (FixMatch, CMKD + FixMatch).

With ``data.strong_target_view=true`` (set automatically for methods that need it) the target
training batch is ``((x_weak, x_strong), idx)``: the weak view is the domain's usual training
transform, the strong view one of these pipelines, drawn from the same decoded sample.

* images (PIL): ``Resize((r, r)) -> CenterCrop(c) -> RandomHorizontalFlip -> ColorJitter(0.4, 0.4, 0.4, 0)
  -> RandAugment 'rand-n2-m10-mstd0.5' (timm; translate_const 100, fill = the normalisation mean)
  -> ToTensor -> Normalize``: the strong pipeline of the CMKD code.
* digits (uint8 tensors): torchvision's ``RandAugment(num_ops=2, magnitude=10)``, whose translations
  scale with the image (a fixed 100-pixel translate would push a 28-px digit out of the frame);
  or, with ``policy`` (e.g. ``rand-m10-n2-mstd2``, TLlib's CC-loss ``--auto-augment``), timm's
  RandAugment on the PIL image as TLlib's ``get_train_transform`` builds it: 15 ops (AutoContrast,
  Equalize, Invert, Rotate, Posterize, Solarize, SolarizeAdd, Color, Contrast, Brightness, Sharpness,
  ShearX/Y, TranslateX/YRel), each applied with probability 0.5, magnitude m with Gaussian noise of
  std ``mstd`` per op, ``translate_const = int(0.45 * image_size)``, fill = the normalisation mean,
  bilinear interpolation.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchvision import transforms as T


def strong_image_transform(resize: int = 256, crop: int = 224, mean: Sequence[float] = (0.485, 0.456, 0.406),
                           std: Sequence[float] = (0.229, 0.224, 0.225), color_jitter: float = 0.4,
                           randaugment: str = "rand-n2-m10-mstd0.5", translate_const: int = 100, **_):
    """The strong view of a PIL image (CMKD's FixMatch pipeline; see the module docstring)."""
    from timm.data.auto_augment import rand_augment_transform

    fill = tuple(int(round(255 * m)) for m in mean)
    ops = [T.Resize((resize, resize)), T.CenterCrop(crop), T.RandomHorizontalFlip()]
    if color_jitter:
        ops.append(T.ColorJitter(color_jitter, color_jitter, color_jitter, 0))
    if randaugment:
        ops.append(rand_augment_transform(randaugment, {"translate_const": translate_const, "img_mean": fill}))
    return T.Compose(ops + [T.ToTensor(), T.Normalize(mean, std)])


def strong_tensor_augment(num_ops: int = 2, magnitude: int = 10, policy: str | None = None, image_size: int = 28,
                          mean: Sequence[float] = (0.5,), **_):
    """The strong view of a uint8 ``(C, H, W)`` digit image, before normalisation: torchvision's
    ``RandAugment(num_ops, magnitude)``, or timm's RandAugment ``policy`` (:class:`TimmRandAugment`)."""
    if policy:
        return TimmRandAugment(policy, image_size, mean)
    from torchvision.transforms import v2

    return v2.RandAugment(num_ops=num_ops, magnitude=magnitude)


class TimmRandAugment:
    """timm's ``rand_augment_transform(policy)`` on a uint8 ``(C, H, W)`` tensor, through PIL (grey
    images as mode ``L``), with TLlib's parameters (module docstring)."""

    def __init__(self, policy: str, image_size: int = 28, mean: Sequence[float] = (0.5,)):
        from PIL import Image
        from timm.data.auto_augment import rand_augment_transform

        fill = tuple(min(255, round(255 * m)) for m in mean)
        self.policy = policy
        self.transform = rand_augment_transform(policy, {"translate_const": int(image_size * 0.45), "img_mean": fill,
                                                         "interpolation": Image.BILINEAR})

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        arr = img.permute(1, 2, 0).numpy()
        out = np.asarray(self.transform(Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)))
        out = torch.from_numpy(out.copy())
        return out.unsqueeze(0) if out.ndim == 2 else out.permute(2, 0, 1)

    def __repr__(self) -> str:
        return f"TimmRandAugment({self.policy!r})"
