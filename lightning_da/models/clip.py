"""CLIP through open_clip: the image encoder as a backbone, the prompt (zero-shot) classifier, CMKD's task head.

``CLIPImageEncoder`` is the backbone (``backbone=clip_rn50|clip_rn101|clip_vitb16``): the CLIP image
tower in fp32, returning the image embedding (``encode_image``: attention pooling / class token and
projection). BatchNorm layers inside a CLIP ResNet stay in eval mode (``freeze_bn``), as the CMKD
code's ``fix_bn``; their affine parameters still train. The text tower is kept only until the
method has built its prompt classifier (:meth:`CLIPImageEncoder.prompt_classifier`), then released.

Zero-shot head: ``g(f) = exp(logit_scale) * normalize(f) @ T^T`` with ``T`` the L2-normalised text
embeddings of the class prompts (frozen) and CLIP's ``logit_scale`` (about 100, not trained).
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_weights_error(model_name: str, pretrained: str, cache_dir: str | None, err: Exception) -> RuntimeError:
    """The error for CLIP weights that cannot be loaded: which weights, where open_clip looks, how to pass a file."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
    hub = cfg.get("hf_hub", "").rstrip("/")
    hf_cache = cache_dir or os.path.join(os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    where = []
    if hub:
        where.append(f"the Hugging Face hub repo {hub!r} (https://huggingface.co/{hub}), cached under {hf_cache}")
    if cfg.get("url"):
        where.append(f"the URL {cfg['url']}")
    known = open_clip.list_pretrained_tags_by_model(model_name)
    return RuntimeError(
        f"Could not load the CLIP weights {model_name} (pretrained={pretrained!r}) through open_clip "
        f"({type(err).__name__}: {err}). open_clip looks for them at " + (" or ".join(where) or
        f"its registry, which knows the tags {known} for {model_name}") + ". "
        "On an offline machine, download the checkpoint elsewhere (e.g. open_clip_model.safetensors from that repo) "
        "and pass it with backbone.pretrained=/path/to/checkpoint, or point backbone.cache_dir at a folder holding "
        "the hub cache. backbone.pretrained=null builds the architecture with random weights (tests only).")


def load_clip(model_name: str, pretrained: str | None = "openai", cache_dir: str | None = None,
              model_cfg: dict | None = None):
    """``(model, tokenizer)`` from ``open_clip.create_model`` in fp32. ``pretrained`` is an open_clip
    tag (``openai``), a local checkpoint file, or None (random weights); ``model_cfg`` overrides the
    architecture config (small random-weight models in tests)."""
    import open_clip

    if pretrained and os.path.sep in pretrained and not os.path.isfile(pretrained):
        raise FileNotFoundError(f"CLIP checkpoint {pretrained!r} (backbone.pretrained) is not a file")
    try:
        model = open_clip.create_model(model_name, pretrained=pretrained or None, cache_dir=cache_dir,
                                       precision="fp32", **(model_cfg or {}))
    except Exception as err:
        if not pretrained or os.path.isfile(pretrained):
            raise
        raise clip_weights_error(model_name, pretrained, cache_dir, err) from err
    tokenizer = open_clip.get_tokenizer(model_name, context_length=model.context_length)
    return model.float(), tokenizer


class CLIPImageEncoder(nn.Module):
    """The CLIP image tower as a backbone (``out_features`` = the embedding width)."""

    def __init__(self, model_name: str = "RN50", pretrained: str | None = "openai", cache_dir: str | None = None,
                 model_cfg: dict | None = None, freeze_bn: bool = True):
        super().__init__()
        model, tokenizer = load_clip(model_name, pretrained, cache_dir, model_cfg)
        self.visual = model.visual
        self.out_features = int(model.visual.output_dim)
        self.logit_scale = float(model.logit_scale.detach().exp())
        self.freeze_bn = freeze_bn
        self._text = (model, tokenizer)  # a plain attribute: not part of the module tree or its checkpoints
        self.train()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_bn:
            for m in self.visual.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)

    @torch.no_grad()
    def prompt_classifier(self, prompts: Sequence[Sequence[str]]) -> torch.Tensor:
        """``(C, d)`` L2-normalised text embeddings, one row per class; a class with several prompts
        (templates) gets the normalised mean of their normalised embeddings."""
        if self._text is None:
            raise RuntimeError("the CLIP text tower was released after the prompt classifier was built")
        model, tokenizer = self._text
        modes = {m: m.training for m in model.modules()}  # its .visual is the backbone: restore its modes
        model.eval()
        rows = []
        for class_prompts in prompts:
            emb = F.normalize(model.encode_text(tokenizer(list(class_prompts))).float(), dim=-1)
            rows.append(F.normalize(emb.mean(0), dim=-1) if len(emb) > 1 else emb[0])
        for m, training in modes.items():
            m.train(training)
        return torch.stack(rows)

    def release_text(self) -> None:
        """Drop the text tower (it is never trained and not needed once the classifier is built)."""
        self._text = None


def prompt_texts(class_names: Sequence[str], template: str | Sequence[str] = "a photo of a {}",
                 rename: dict | None = None, names: Sequence[str] | None = None) -> list[list[str]]:
    """The prompts of each class, in the data's class order.

    The text of a class is ``names[i]`` when a full list is given (image lists with numeric classes),
    else ``rename[folder]`` when present, else the folder name lower-cased with ``_`` as spaces
    ("Alarm_Clock" -> "alarm clock").
    """
    rename = dict(rename or {})
    unknown = sorted(set(rename) - set(class_names))
    if unknown:  # e.g. a copy of the dataset whose folders are already spelled as the prompt wants
        log.warning("prompts.rename names classes the data does not have (ignored): %s; the data's classes are %s",
                    unknown, list(class_names))
    if names is not None:
        if len(names) != len(class_names):
            raise ValueError(f"prompts.class_names has {len(names)} names but the data has {len(class_names)} classes "
                             f"({list(class_names)[:5]}...); give one name per class, in the data's class order")
        texts = list(names)
    else:
        texts = [rename.get(c, c.replace("_", " ").lower()) for c in class_names]
    templates = [template] if isinstance(template, str) else list(template)
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"prompt template {t!r} has no '{{}}' for the class name")
    return [[t.format(name) for t in templates] for name in texts]


class ZeroShotHead(nn.Module):
    """``g(f) = scale * normalize(f) @ T^T``; ``T`` and ``scale`` are constants (buffers)."""

    def __init__(self, text_features: torch.Tensor, logit_scale: float):
        super().__init__()
        self.register_buffer("text_features", text_features.detach().clone())
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale)))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * F.normalize(f, dim=-1) @ self.text_features.t().to(f.dtype)


def zero_shot_head(backbone: CLIPImageEncoder, class_names: Sequence[str], prompts: dict | None = None,
                   release_text: bool = True) -> ZeroShotHead:
    """Build the prompt classifier of ``class_names`` (``prompts``: ``template``, ``rename``,
    ``class_names``; see :func:`prompt_texts`) and, by default, release the text tower."""
    if not isinstance(backbone, CLIPImageEncoder):
        raise TypeError(f"this method needs a CLIP backbone (backbone=clip_rn50|clip_rn101|clip_vitb16), got {type(backbone).__name__}")
    prompts = dict(prompts or {})
    texts = prompt_texts(class_names, prompts.get("template", "a photo of a {}"), prompts.get("rename"),
                         prompts.get("class_names"))
    head = ZeroShotHead(backbone.prompt_classifier(texts), backbone.logit_scale)
    head.prompts = texts
    log.info("zero-shot head: %d classes, e.g. %s", len(texts), texts[:3])
    if release_text:
        backbone.release_text()
    return head


class CMKDHead(nn.Sequential):
    """CMKD's task head: ``BatchNorm1d(d) -> LayerNorm(d, eps 1e-6) -> Linear(d, C, bias=False)``;
    Linear weights from N(0, 0.001^2), BN weight 1 and bias 0 with the BN bias frozen."""

    def __init__(self, in_features: int, num_classes: int):
        bn = nn.BatchNorm1d(in_features)
        linear = nn.Linear(in_features, num_classes, bias=False)
        nn.init.normal_(linear.weight, 0.0, 0.001)
        nn.init.ones_(bn.weight)
        nn.init.zeros_(bn.bias)
        bn.bias.requires_grad_(False)
        super().__init__(bn, nn.LayerNorm(in_features, eps=1e-6), linear)
        self.out_features = num_classes
