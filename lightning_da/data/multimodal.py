"""Multi-source, multi-modal domains: samples with texts, images and feature vectors (M2CAN).

A sample is ``(x, label)`` where ``x`` is a dict of named inputs, one entry per modality, each with
its strong view under ``<name>_strong`` in training splits:

* ``text``: one string (a sample's texts joined, see :func:`join_texts`); ``text_strong``: the same
  with word dropout (each word removed with probability ``word_dropout``).
* ``image``: ``(K, 3, H, W)`` float, up to ``K = max_images`` images zero-padded, with
  ``image_mask`` ``(K,)`` bool marking the real ones; ``image_strong`` the strong views.
* ``bow``: a bag-of-words vector (Amazon reviews stand-in); ``bow_strong``: word dropout on it.

Evaluation splits (``train_eval``, ``test``) hold the weak views only. The default collate turns a
batch into a dict of stacked tensors and lists of strings. :func:`cat_inputs` concatenates such
batches (several domains in one forward) and :func:`input_len` counts their rows.

Readers:

* :func:`multimodal_domain`: the M2CAN JSON-list format, a JSON array (or JSON lines) of
  ``{"text": [str, ...], "image": [file, ...], "label": int}`` with an image root per domain.
  Weak images ``Resize(256) -> CenterCrop(224)``; strong ``RandomResizedCrop(224) -> HFlip ->
  RandomApply(ColorJitter(0.4, 0.4, 0.4, 0.1), p=0.8) -> RandomGrayscale(0.2)``; ImageNet
  normalisation; texts stripped of punctuation, whitespace collapsed.
* :func:`amazon_review_domain`: Blitzer's raw reviews (``<root>/<domain>/{positive,negative}.review``)
  as ``text`` (the review text) plus ``bow``, binary presence of the ``vocab_size`` most frequent
  words over the text of ``vocab_domains`` (no labels used). Text and bag of words are two views of
  the same review: a two-view stand-in for two modalities, not two modalities.

:class:`MultiSourceDataModule` is :class:`~lightning_da.data.DADataModule` with the original's
per-epoch resampling: an epoch is ``ceil(n_sample / batch_size)`` steps per domain, drawn with
repetition by the cycling samplers.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import string
from collections import Counter
from functools import lru_cache
from typing import Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from lightning_da.data.batches import cat_inputs, input_len  # noqa: F401 (re-exported)
from lightning_da.data.datamodule import DADataModule
from lightning_da.data.domain import DataError, Domain
from lightning_da.data.images import IMAGENET_MEAN, IMAGENET_STD
from lightning_da.data.preprocess import describe_transform

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


# ---------------------------------------------------------------------------------------------- text
def clean_text(text: str) -> str:
    """Punctuation removed, whitespace collapsed (the original's ``prepare_text`` cleaning)."""
    return " ".join(_PUNCT.sub(" ", text).split())


def join_texts(texts: Sequence[str], style: str = "bert") -> str:
    """One string from a sample's texts. ``bert`` (faithful): ``'[CLS] ' + ' [SEP] '.join(texts) +
    ' [SEP] '`` (the tokenizer adds its own [CLS], so the sequence starts with two: a quirk of the
    original); ``space``: the texts joined by spaces."""
    if style == "bert":
        return "[CLS] " + " [SEP] ".join(texts) + " [SEP] "
    if style == "space":
        return " ".join(texts)
    raise ValueError(f"unknown text join style {style!r}; use bert or space")


def word_dropout(text: str, p: float, rng: random.Random | None = None) -> str:
    """Each whitespace-separated word dropped with probability ``p`` (special tokens kept)."""
    if p <= 0:
        return text
    rng = rng or random
    words = [w for w in text.split() if w in ("[CLS]", "[SEP]") or rng.random() >= p]
    return " ".join(words)


# ---------------------------------------------------------------------------------------------- images
def weak_image_transform(resize: int = 256, crop: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """``Resize(resize) -> CenterCrop(crop) -> ToTensor -> Normalize``."""
    return T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(), T.Normalize(mean, std)])


def strong_mm_image_transform(crop: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD, **_):
    """``RandomResizedCrop(crop) -> HFlip(0.5) -> RandomApply(ColorJitter(0.4,0.4,0.4,0.1), 0.8) ->
    RandomGrayscale(0.2) -> ToTensor -> Normalize`` (M2CAN's strong view)."""
    return T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip(),
                      T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), T.RandomGrayscale(0.2),
                      T.ToTensor(), T.Normalize(mean, std)])


def _load_rgb(path: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read image {path}: {err}") from err


# ---------------------------------------------------------------------------------------------- JSON lists
def read_json_list(path: str, num_classes: int | None = None, max_images: int = 10, need_images: bool = True) -> list[dict]:
    """Entries of an M2CAN list file, checked: ``text`` a non-empty list of strings, ``image`` a list
    of at most ``max_images`` file names (non-empty when ``need_images``), ``label`` an int in
    ``[0, num_classes)``. Each error names the file, the entry and the problem."""
    if not os.path.isfile(path):
        raise DataError(f"multi-modal list file not found: {os.path.abspath(path)}")
    with open(path, encoding="utf-8") as fh:
        raw = fh.read()
    try:
        entries = json.loads(raw)
    except json.JSONDecodeError:
        try:  # JSON lines
            entries = [json.loads(line) for line in raw.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise DataError(f"{path} is neither a JSON list nor JSON lines: {err}") from err
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path} holds no entries: expected a JSON list of {{'text': [...], 'image': [...], 'label': int}}")
    for i, e in enumerate(entries):
        where = f"{path} entry {i}"
        if not isinstance(e, dict) or not {"text", "image", "label"} <= set(e):
            raise DataError(f"{where}: expected keys text, image, label, got {sorted(e) if isinstance(e, dict) else type(e).__name__}")
        if isinstance(e["text"], str):
            e["text"] = [e["text"]]
        if not e["text"] or not all(isinstance(t, str) for t in e["text"]):
            raise DataError(f"{where}: 'text' must be a non-empty list of strings")
        if isinstance(e["image"], str):
            e["image"] = [e["image"]]
        if need_images and not e["image"]:
            raise DataError(f"{where}: 'image' is empty; every sample needs at least one image")
        if len(e["image"]) > max_images:
            raise DataError(f"{where}: {len(e['image'])} images, more than max_images={max_images} "
                            "(raise data.domain_args.max_images or shorten the list)")
        if isinstance(e["label"], bool) or not isinstance(e["label"], int):
            raise DataError(f"{where}: 'label' must be an int, got {e['label']!r}")
        if num_classes is not None and not 0 <= e["label"] < num_classes:
            raise DataError(f"{where}: label {e['label']} outside [0, {num_classes}) for {num_classes} classes")
    return entries


class MultiModalList(Dataset):
    """Samples of a JSON list as ``({"text", "image", "image_mask"[, "*_strong"]}, label)``.

    ``strong=True`` adds ``text_strong`` (word dropout) and ``image_strong`` (strong transform of the
    same decoded images). Images are padded with zeros to ``max_images``."""

    def __init__(self, entries: list[dict], image_root: str, max_images: int = 10, strong: bool = False,
                 weak_transform=None, strong_transform=None, word_dropout: float = 0.1, join: str = "bert",
                 crop: int = 224):
        self.entries, self.image_root, self.max_images, self.strong = entries, image_root, max_images, strong
        self.weak, self.strong_tf = weak_transform, strong_transform
        self.p_drop, self.join, self.crop = word_dropout, join, crop
        self.texts = [join_texts([clean_text(t) for t in e["text"]], join) for e in entries]
        self.labels = torch.tensor([e["label"] for e in entries])

    def __len__(self) -> int:
        return len(self.entries)

    def _images(self, files: list[str]):
        k = self.max_images
        weak = torch.zeros(k, 3, self.crop, self.crop)
        strong = torch.zeros(k, 3, self.crop, self.crop) if self.strong else None
        mask = torch.zeros(k, dtype=torch.bool)
        for j, f in enumerate(files):
            img = _load_rgb(os.path.join(self.image_root, f))
            weak[j] = self.weak(img)
            if strong is not None:
                strong[j] = self.strong_tf(img)
            mask[j] = True
        return weak, strong, mask

    def __getitem__(self, i):
        e = self.entries[i]
        weak, strong, mask = self._images(e["image"])
        x = {"text": self.texts[i], "image": weak, "image_mask": mask}
        if self.strong:
            x["text_strong"] = word_dropout(self.texts[i], self.p_drop)
            x["image_strong"] = strong
        return x, self.labels[i]


def multimodal_domain(name: str, train_list: str, image_root: str, classes: Sequence[str], test_list: str | None = None,
                      root: str | None = None, max_images: int = 10, resize: int = 256, crop: int = 224,
                      word_dropout: float = 0.1, join: str = "bert", check_files: bool = True) -> Domain:
    """A domain from M2CAN list files: ``train_list`` (and ``test_list``, the target's val split)
    relative to ``root`` when given, images under ``image_root`` (relative to ``root`` too).
    ``check_files`` checks that every listed image exists (the error names the first missing one)."""
    def at(p):
        return p if p is None or root is None or os.path.isabs(p) else os.path.join(root, p)

    image_root = at(image_root)
    if not os.path.isdir(image_root):
        raise DataError(f"domain {name!r}: image root {os.path.abspath(image_root)!r} does not exist")
    weak, strong = weak_image_transform(resize, crop), strong_mm_image_transform(crop)

    def load(path):
        entries = read_json_list(at(path), len(classes), max_images)
        if check_files:
            for i, e in enumerate(entries):
                for f in e["image"]:
                    if not os.path.isfile(os.path.join(image_root, f)):
                        raise DataError(f"domain {name!r}: {at(path)} entry {i} names image {f!r}, "
                                        f"not found under {image_root}")
        return entries

    kw = dict(image_root=image_root, max_images=max_images, weak_transform=weak, strong_transform=strong,
              word_dropout=word_dropout, join=join, crop=crop)
    train = load(train_list)
    test = MultiModalList(load(test_list), **kw) if test_list else None
    eval_input = {"kind": "multimodal", "inputs": {
        "text": {"kind": "texts", "join": join},
        "image": {"kind": "image_set", "max_images": max_images, "crop": crop, "ops": describe_transform(weak)}}}
    return Domain(name, MultiModalList(train, strong=True, **kw), list(classes), test=test,
                  train_eval=MultiModalList(train, **kw), info={"modalities": ["text", "image"]}, eval_input=eval_input)


# ---------------------------------------------------------------------------------------------- Amazon reviews
_REVIEW = re.compile(r"<review>(.*?)</review>", re.S)
_FIELD = re.compile(r"<review_text>(.*?)</review_text>", re.S)
_WORD = re.compile(r"[a-z0-9']+")
AMAZON_DOMAINS = ("books", "dvd", "electronics", "kitchen")


def read_reviews(path: str) -> list[str]:
    """Review texts of one Blitzer ``.review`` file (pseudo-XML, parsed per ``<review>`` block)."""
    if not os.path.isfile(path):
        raise DataError(f"review file not found: {os.path.abspath(path)} (expected <root>/<domain>/positive.review "
                        "and negative.review, Blitzer's raw layout)")
    with open(path, encoding="utf-8", errors="replace") as fh:
        blocks = _REVIEW.findall(fh.read())
    texts = []
    for b in blocks:
        m = _FIELD.search(b)
        if m and m.group(1).strip():
            texts.append(" ".join(m.group(1).split()))
    if not texts:
        raise DataError(f"{path}: no <review> block with a <review_text> found")
    return texts


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@lru_cache(maxsize=8)
def review_vocabulary(root: str, domains: tuple[str, ...], size: int) -> dict[str, int]:
    """The ``size`` words with the highest document frequency over the reviews of ``domains``
    (ties by word), mapped to columns. Labels are not used."""
    df: Counter = Counter()
    for d in domains:
        for pol in ("positive", "negative"):
            for t in read_reviews(os.path.join(root, d, f"{pol}.review")):
                df.update(set(_words(t)))
    return {w: i for i, (w, _) in enumerate(sorted(df.items(), key=lambda kv: (-kv[1], kv[0]))[:size])}


class ReviewSamples(Dataset):
    """``({"text", "bow"[, "text_strong", "bow_strong"]}, label)`` per review; the bag of words is
    kept sparse (word columns per review) and made dense per item."""

    def __init__(self, texts: list[str], labels: torch.Tensor, vocab: dict[str, int], strong: bool = False,
                 text_dropout: float = 0.0, bow_dropout: float = 0.1):
        self.texts, self.labels, self.dim, self.strong = texts, labels, len(vocab), strong
        self.cols = [torch.tensor(sorted({vocab[w] for w in _words(t) if w in vocab}), dtype=torch.long) for t in texts]
        self.text_dropout, self.bow_dropout = text_dropout, bow_dropout

    def __len__(self) -> int:
        return len(self.texts)

    def _bow(self, cols: torch.Tensor) -> torch.Tensor:
        v = torch.zeros(self.dim)
        v[cols] = 1.0
        return v

    def __getitem__(self, i):
        x = {"text": self.texts[i], "bow": self._bow(self.cols[i])}
        if self.strong:
            x["text_strong"] = word_dropout(self.texts[i], self.text_dropout)
            keep = self.cols[i][torch.rand(len(self.cols[i])) >= self.bow_dropout]
            x["bow_strong"] = self._bow(keep)
        return x, self.labels[i]


def amazon_review_domain(name: str, root: str, vocab_size: int = 5000, vocab_domains: Sequence[str] = AMAZON_DOMAINS,
                         text_dropout: float = 0.0, bow_dropout: float = 0.1, max_per_class: int | None = None) -> Domain:
    """Amazon reviews of ``name`` (labels: negative 0, positive 1) as text + bag-of-words samples.

    ``text_dropout`` is 0 by default: with a frozen, cached text encoder the strong text view would
    miss the cache on every step, so the two text views coincide; the bag of words carries the
    word-dropout strong view (``bow_dropout``). ``max_per_class`` takes the first reviews of each
    class (tests)."""
    if name not in vocab_domains:
        raise DataError(f"domain {name!r} is not among vocab_domains {list(vocab_domains)}")
    texts, labels = [], []
    for y, pol in enumerate(("negative", "positive")):
        t = read_reviews(os.path.join(root, name, f"{pol}.review"))
        t = t[:max_per_class] if max_per_class else t
        texts += t
        labels += [y] * len(t)
    vocab = review_vocabulary(root, tuple(vocab_domains), vocab_size)
    labels = torch.tensor(labels)
    kw = dict(texts=texts, labels=labels, vocab=vocab)
    return Domain(name, ReviewSamples(strong=True, text_dropout=text_dropout, bow_dropout=bow_dropout, **kw),
                  ["negative", "positive"], train_eval=ReviewSamples(**kw),
                  info={"modalities": ["text", "bow"], "bow_dim": len(vocab)},
                  eval_input={"kind": "multimodal", "inputs": {"text": {"kind": "text"},
                                                               "bow": {"kind": "bag_of_words", "vocabulary": sorted(vocab, key=vocab.get)}}})


# ---------------------------------------------------------------------------------------------- batches
class MultiSourceDataModule(DADataModule):
    """:class:`DADataModule` whose epoch is ``ceil(n_sample / batch_size)`` steps (the original's
    resampling of every domain list to ``n_sample`` items per epoch); ``n_sample: null`` keeps
    ``iters_per_epoch``. ``source: rest`` takes every configured domain but the target as a source."""

    def __init__(self, domains, source, target, *args, n_sample: int | None = None, **kwargs):
        if source == "rest":
            source = [n for n in domains if n != target]
        super().__init__(domains, source, target, *args, **kwargs)
        self.n_sample = n_sample
        if n_sample is not None:
            if n_sample < self.batch_size:
                raise ValueError(f"data.n_sample={n_sample} is smaller than one batch ({self.batch_size})")
            self.iters_per_epoch = math.ceil(n_sample / self.batch_size)
