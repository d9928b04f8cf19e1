"""Tiny random-weight CLIPs built through the same open_clip calls as the real ones, shared by the
tests of CMKD and zero-shot CLIP (tests/methods/test_cmkd.py, tests/methods/test_zeroshot.py) and the
``tiny_clip`` fixture of tests/conftest.py (CLIP and RST unit tests).

:func:`calibrated_clip` re-weights its model so that a step is not degenerate: the ResNet's BatchNorm
layers get random affine parameters and running statistics measured on a calibration batch
(random-init CLIP blocks zero their last BN, and with running stats 0/1 every image maps to the same
embedding; the ViT's pooled token is centred likewise).
"""

import math

import torch
import torch.nn.functional as F

from conftest import QUICK
from lightning_da.models.clip import CLIPImageEncoder


TEXT = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
ARCHS = {  # (open_clip model name, architecture override, image size)
    "rn": ("RN50", {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 4, "head_width": 8},
                    "text_cfg": TEXT, "init_logit_scale": math.log(60.0)}, 32),
    "vit": ("ViT-B-16", {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                                         "head_width": 16},
                         "text_cfg": TEXT, "init_logit_scale": math.log(60.0)}, 32),
}
CLASSES = ["back_pack", "Alarm_Clock", "bike", "desk_lamp"]


TINY_RN = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
           "text_cfg": TEXT}
TINY_RN_OVERRIDE = ("backbone.model_cfg={embed_dim:32,vision_cfg:{image_size:64,layers:[1,1,1,1],width:8,head_width:8},"
                    "text_cfg:{context_length:16,vocab_size:49408,width:32,heads:2,layers:1}}")


# the runs through the Hydra app: the tiny RN50 at 64 px on CPU, a few steps
SMALL = ["trainer=cpu", "data.num_workers=0", "data.pin_memory=false", "data.persistent_workers=false",
         "data.domain_args.transform.resize=72", "data.domain_args.transform.crop=64",
         "data.domain_args.transform.test_resize=64", "backbone.pretrained=null", TINY_RN_OVERRIDE]
FEW = [*QUICK, "data.iters_per_epoch=3", "data.batch_size=4", "trainer.max_epochs=1", "trainer.precision=32"]


def calibrated_clip(arch: str = "rn", seed: int = 0):
    """A tiny random-weight CLIP image encoder and the open_clip ``(model, tokenizer)`` behind it."""
    name, cfg, _ = ARCHS[arch]
    torch.manual_seed(seed)
    enc = CLIPImageEncoder(name, pretrained=None, model_cfg=cfg)
    clip_model, tokenizer = enc._text
    bns = [m for m in enc.visual.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:  # random affine; running stats of a calibration batch (as a pretrained net would have)
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)
            m.reset_running_stats()
            m.momentum = None
            m.train()
        calibration = torch.randn(16, 3, ARCHS[arch][2], ARCHS[arch][2])
        if bns:
            enc.visual(calibration)
        for m in bns:
            m.momentum = 0.1
            m.eval()
        if not bns:  # ViT: centre the class token after ln_post on the calibration batch
            out = {}
            hook = enc.visual.ln_post.register_forward_hook(lambda m, i, o: out.setdefault("tokens", o))
            enc.visual(calibration)
            hook.remove()
            enc.visual.ln_post.bias.sub_(out["tokens"][:, 0].mean(0))
    return enc, clip_model, tokenizer


def text_embeddings(clip_model, tokenizer, prompts: list[list[str]]) -> torch.Tensor:
    """Row c: the normalised mean of the normalised text embeddings of class c's prompts (one prompt:
    its normalised embedding)."""
    clip_model.eval()
    rows = []
    with torch.no_grad():
        for p in prompts:
            e = F.normalize(clip_model.encode_text(tokenizer(p)).float(), dim=-1)
            rows.append(F.normalize(e.mean(0), dim=-1) if len(e) > 1 else e[0])
    return torch.stack(rows)


def images(n: int, size: int, gen: torch.Generator, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=gen) * scale + shift


def image_batch(arch: str = "rn", strong: bool = False, seed: int = 1) -> dict:
    """5 source images, 7 target images (shifted and scaled); a strong view of the target, if asked."""
    size = ARCHS[arch][2]
    g = torch.Generator().manual_seed(seed)
    xs, xt = images(5, size, g), images(7, size, g, shift=0.4, scale=1.5)
    if strong:  # another view of the same target images
        xt = (xt, 0.7 * xt.flip(-1) + 0.3 * images(7, size, g))
    return {"source": (xs, torch.tensor([0, 3, 1, 2, 3])), "target": (xt, torch.arange(7))}
