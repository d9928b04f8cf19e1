"""CLIP zero-shot classification of the target: ``argmax_c exp(s) <normalize(f(x)), t_c>`` with the
text embeddings ``t_c`` of the class prompts (``prompts``: template, renames or names; see
:func:`~lightning_da.models.clip.prompt_texts`). Nothing is trained: ``run.py method=zeroshot``
evaluates the pretrained model directly (the "CLIP" rows of the CMKD tables).
"""

from __future__ import annotations

import torch

from lightning_da.methods.base import DAMethod, Needs
from lightning_da.models.clip import zero_shot_head


class ZeroShotCLIP(DAMethod):
    #: ``train()`` skips fitting and tests the model as built, with prompts from the data's class names
    needs = Needs(class_names=True, domain_split=False, trains=False)
    #: nothing is trained: no bottleneck, losses, learning rates or compiled training
    unused_options = ("bottleneck", "lr_mult", "group_options", "extra_losses", "compile")

    def __init__(self, *args, class_names: list[str], prompts: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.zero_shot = zero_shot_head(self.backbone, list(class_names), dict(prompts or {}))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.zero_shot(features)

    def training_step(self, batch, batch_idx):
        raise RuntimeError("zero-shot CLIP has nothing to train: run it through lightning_da.train, which only evaluates it")
