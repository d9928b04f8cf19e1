"""CLIP zero-shot classification of the target: ``argmax_c exp(s) <normalize(f(x)), t_c>`` with the
text embeddings ``t_c`` of the class prompts (``prompts``: template, renames or names; see
:func:`~lightning_da.models.clip.prompt_texts`). Nothing is trained: ``run.py method=zeroshot``
evaluates the pretrained model directly (the "CLIP" rows of the CMKD tables).
"""

from __future__ import annotations

import torch

from lightning_da.methods.base import DAMethod
from lightning_da.models.clip import zero_shot_head


class ZeroShotCLIP(DAMethod):
    #: ``train()`` skips fitting and tests the model as built
    trains = False
    splits_domains = False
    #: nothing is trained: no heads, losses, learning rates or compiled training
    unused_options = ("trade_off", "classifier_init", "bottleneck", "lr_mult", "extra_losses", "compile")

    def __init__(self, *args, class_names: list[str], prompts: dict | None = None, **kwargs):
        self._class_names, self._prompts = list(class_names), dict(prompts or {})
        super().__init__(*args, **kwargs)

    def build_heads(self) -> None:
        self.zero_shot = zero_shot_head(self.backbone, self._class_names, self._prompts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict_features(x)[1]

    def predict_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return f, self.zero_shot(f)

    def training_step(self, batch, batch_idx):
        raise RuntimeError("zero-shot CLIP has nothing to train: run it through lightning_da.train, which only evaluates it")
