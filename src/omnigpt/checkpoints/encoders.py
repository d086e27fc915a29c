"""Ready-made pretrained pipelines: ImageNet classification (MobileNetV2) and sentence embeddings (all-MiniLM-L6-v2).

* ``classify_image(path, top_k)`` → ``[{"label": "Egyptian cat", "score": 0.717}, ...]``, the output shape of
  ``transformers``' image-classification pipeline. Preprocessing is torchvision's ImageNet evaluation transform
  (``Resize(256)`` bilinear on the PIL image, ``CenterCrop(224)``, ``ToTensor``, ``Normalize`` with ImageNet's
  mean/std) computed with Pillow and torch alone (torchvision is not a dependency). Images are opened through
  ``processors.load_image``: decompression bombs and truncated files are refused with ``ProcessorError``.
* ``embed_sentences(texts)`` → (N, 384) unit vectors: tokenised as sentence-transformers does (WordPiece,
  [CLS] … [SEP], truncated to 256 tokens, padded to the longest in the batch), mean-pooled, L2-normalised, so
  ``a @ b.T`` is the cosine similarity.

Both load their pinned model on first use and keep it (one per process); pass ``model=`` to use another.
``mobilenet_v2_pretrained`` and ``all_minilm_l6_v2_pretrained`` are the ``(model, preprocessor)`` loaders that
``checkpoints/registry.py`` names for ``from_pretrained("mobilenet-v2")`` / ``("all-minilm-l6-v2")``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer
from torch import Tensor

from omnigpt.checkpoints.bert import load_all_minilm_l6_v2, load_bert, load_bert_tokenizer
from omnigpt.checkpoints.torchvision import imagenet_labels, load_mobilenet_v2
from omnigpt.models.bert import BertModel
from omnigpt.models.mobilenet import MobileNetV2
from omnigpt.text.processors import MAX_PIXELS, ImageInput, load_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ------------------------------------------------------------------------------------------------------------
# Images


def imagenet_transform(img: Image.Image, resize: int = 256, crop: int = 224) -> Tensor:
    """torchvision's ImageNet eval transform on a PIL image → (3, crop, crop) float32, normalised.

    Shorter side → ``resize`` (longer side truncated as torchvision does: 451×300 → 384×256), bilinear (Pillow
    antialiases when it shrinks), centre crop with torchvision's rounding, scale to [0, 1], subtract the mean and
    divide by the std per channel."""
    img = img.convert("RGB")
    w, h = img.size
    nw, nh = (resize, int(resize * h / w)) if w <= h else (int(resize * w / h), resize)
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    top, left = int(round((nh - crop) / 2.0)), int(round((nw - crop) / 2.0))
    img = img.crop((left, top, left + crop, top + crop))  # pads with black if the image is smaller than crop
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W) in [0, 1]
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


@dataclass(frozen=True)
class ImageNetPreprocessor:
    """An image (path or PIL image) → a (1, 3, crop, crop) batch, plus the class names of the model's outputs."""

    labels: tuple[str, ...]
    resize: int = 256
    crop: int = 224

    def __call__(self, image: ImageInput) -> Tensor:
        return imagenet_transform(load_image(image, MAX_PIXELS), self.resize, self.crop)[None]


def mobilenet_v2_pretrained(path: str | Path | None = None) -> tuple[MobileNetV2, ImageNetPreprocessor]:
    """torchvision's ImageNet MobileNetV2 (``path``: its ``.pth``; None: the pinned asset) and its preprocessor."""
    return load_mobilenet_v2(path), ImageNetPreprocessor(imagenet_labels())


@functools.cache
def _mobilenet() -> tuple[MobileNetV2, ImageNetPreprocessor]:
    return mobilenet_v2_pretrained()


def classify_image(image: ImageInput, top_k: int = 5, model: MobileNetV2 | None = None,
                   labels: Sequence[str] | None = None) -> list[dict[str, float | str]]:
    """The ``top_k`` ImageNet classes of an image (path or PIL image) with their softmax probabilities, best first.

    Defaults: torchvision's ImageNet MobileNetV2 and its 1000 class names."""
    model = model or _mobilenet()[0]
    labels = imagenet_labels() if labels is None else labels
    n = model.config.num_classes
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for a {n}-class model")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or not 1 <= top_k <= n:
        raise ValueError(f"top_k must be an integer in [1, {n}], got {top_k!r}")
    x = imagenet_transform(load_image(image, MAX_PIXELS))[None]  # (1, 3, 224, 224)
    with torch.inference_mode():
        probs = model.eval()(x).float().softmax(dim=-1)[0]  # (num_classes,)
    scores, idx = probs.topk(top_k)
    return [{"label": labels[i], "score": s} for s, i in zip(scores.tolist(), idx.tolist(), strict=True)]


# ------------------------------------------------------------------------------------------------------------
# Sentences


def all_minilm_l6_v2_pretrained(path: str | Path | None = None) -> tuple[BertModel, Tokenizer]:
    """all-MiniLM-L6-v2 and its tokenizer (``path``: its ``model.safetensors``, the other files beside it; None:
    the pinned asset)."""
    if path is None:
        return load_all_minilm_l6_v2()
    model = load_bert(Path(path).parent, weights=path)
    return model, load_bert_tokenizer(Path(path).parent, model.config.max_length)


@functools.cache
def _minilm() -> tuple[BertModel, Tokenizer]:
    return all_minilm_l6_v2_pretrained()


def _check_texts(texts: str | Sequence[str]) -> list[str]:
    items = [texts] if isinstance(texts, str) else list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise ValueError(f"texts[{i}] must be a string, got {type(t).__name__}")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"texts[{i}] is not valid Unicode (a lone surrogate?)") from None
    return items


def tokenize_batch(tokenizer: Tokenizer, texts: str | Sequence[str]) -> dict[str, Tensor]:
    """``input_ids``, ``attention_mask``, ``token_type_ids`` (B, T), right-padded with the tokenizer's [PAD] id to
    the longest text; the tokenizer truncates (``load_bert_tokenizer`` sets its limit)."""
    items = _check_texts(texts)
    if not items:
        raise ValueError("no texts to tokenize")
    encs = tokenizer.encode_batch(items)
    pad = tokenizer.token_to_id("[PAD]") or 0
    T = max(len(e.ids) for e in encs)
    ids = torch.full((len(encs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(encs), T), dtype=torch.long)
    types = torch.zeros((len(encs), T), dtype=torch.long)
    for row, e in enumerate(encs):
        n = len(e.ids)
        ids[row, :n] = torch.tensor(e.ids)
        mask[row, :n] = 1
        types[row, :n] = torch.tensor(e.type_ids)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def embed_sentences(texts: str | Sequence[str], model: BertModel | None = None, tokenizer: Tokenizer | None = None,
                    batch_size: int = 32) -> Tensor:
    """(N, C) sentence embeddings, float32 (unit length for all-MiniLM-L6-v2, the default model). A single string
    gives N = 1; an empty list gives (0, C)."""
    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer, or neither")
    if model is None or tokenizer is None:
        model, tokenizer = _minilm()
    items = _check_texts(texts)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = [torch.zeros(0, model.config.n_embd)]
    model.eval()
    # Sorting by length keeps padding (wasted work) small; the original order is restored at the end.
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            batch = tokenize_batch(tokenizer, [items[i] for i in order[start : start + batch_size]])
            out.append(model.sentence_embedding(**batch).float())
    emb = torch.cat(out)
    result = torch.empty_like(emb)
    result[torch.tensor(order, dtype=torch.long)] = emb
    return result


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageNetPreprocessor", "all_minilm_l6_v2_pretrained", "classify_image",
           "embed_sentences", "imagenet_transform", "mobilenet_v2_pretrained", "tokenize_batch"]
