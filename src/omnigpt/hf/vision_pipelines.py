"""Vision pipelines in Hugging Face's shapes: ``"image-classification"`` and ``"text-to-image"``.

* ``image_classification(model, device, top_k=5)`` → ``classify(inputs)``. ``model`` is an ``image-classify`` run
  (or checkpoint) directory — a ViT or a fine-tuned MobileNetV2 trained by ``train/tasks/image_classify.py``, whose
  labels are the run's classes — or None / ``"mobilenet-v2"`` for torchvision's pretrained ImageNet MobileNetV2
  (``text.pipelines.classify_image``). An input is a path, a PIL image or a uint8/float array ((H, W) grey or
  (H, W, 3) RGB; floats in [0, 1]). One input returns ``[{"label", "score"}, ...]`` (top_k, best first), a list
  returns one such list per input — what ``transformers.pipeline("image-classification")`` returns. Files that are
  not images are refused with a ``ProcessorError`` (a ValueError) naming the file. The ViT sees what it was trained
  on: the image in grey, resized to its input size, normalised with the training set's statistics (Fashion-MNIST:
  light object on black); a fine-tuned MobileNetV2 sees its training rendering (``data.imagesets.render``:
  transparency on white, fitted into its square input, ImageNet normalisation).
* ``text_to_image(model, device)`` → ``draw(prompt, num_images=1, seed=None, temperature=None)``. ``model`` is an
  ``igpt`` run; ``prompt`` is one of its class names (case and punctuation ignored) and an unknown one is a
  ValueError naming the valid classes. Returns ``[{"image": PIL.Image}, ...]`` (grey, the model's size).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from omnigpt.checkpoints.pretrained import load_pretrained
from omnigpt.checkpoints.state import resolve_checkpoint
from omnigpt.data.imagesets import render
from omnigpt.models.igpt import IGPT, dequantize
from omnigpt.models.mobilenet import MobileNetV2ForImageClassification
from omnigpt.models.vision import ViTForImageClassification
from omnigpt.text.processors import ImageInput, load_image

MAX_PIXELS = 50_000_000  # larger images are refused before decoding (decompression bombs)
MOBILENET = "mobilenet-v2"


def as_pil(image: ImageInput | np.ndarray) -> Image.Image:
    """A path, PIL image or array → a decoded PIL image (arrays: (H, W) or (H, W, 3); uint8, or floats in
    [0, 1])."""
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
            raise ValueError(f"an image array must be (H, W) or (H, W, 1|3|4), got shape {a.shape}")
        if a.dtype != np.uint8:
            a = (np.clip(a.astype(np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)
        return Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a)
    if not isinstance(image, str | Path | Image.Image):
        raise ValueError(f"expected an image path, PIL image or array, got {type(image).__name__}")
    return load_image(image, MAX_PIXELS)


class ViTClassifier:
    """An ``image-classify`` checkpoint as a pipeline callable."""

    def __init__(self, model: ViTForImageClassification, device: str = "cpu", top_k: int = 5) -> None:
        self.model, self.device = model.to(device).eval(), device
        self.top_k = top_k

    def preprocess(self, image: ImageInput | np.ndarray) -> torch.Tensor:
        cfg = self.model.config
        size = cfg.vision.image_size
        img = as_pil(image).convert("L").resize((size, size), Image.Resampling.BILINEAR)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]  # (1, H, W)
        return (x - cfg.pixel_mean) / cfg.pixel_std

    def __call__(self, inputs: Any, top_k: int | None = None) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        single = not isinstance(inputs, list | tuple)
        items = [inputs] if single else list(inputs)
        k = self.top_k if top_k is None else top_k
        labels = self.model.config.labels
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(labels):
            raise ValueError(f"top_k must be an integer in [1, {len(labels)}], got {k!r}")
        x = torch.stack([self.preprocess(i) for i in items]).to(self.device)  # (N, 1, H, W)
        with torch.inference_mode():
            probs = self.model(x).logits.float().softmax(-1).cpu()  # (N, K)
        scores, idx = probs.topk(k, dim=-1)
        out = [[{"label": labels[i], "score": s} for s, i in zip(sr, ir, strict=True)]
               for sr, ir in zip(scores.tolist(), idx.tolist(), strict=True)]
        return out[0] if single else out


class FineTunedMobileNetClassifier(ViTClassifier):
    """A fine-tuned MobileNetV2 checkpoint (``image-classify`` with ``backbone: mobilenet-v2``) as a pipeline
    callable: the same call and output as ``ViTClassifier``, with the run's own preprocessing and labels."""

    def __init__(self, model: MobileNetV2ForImageClassification, device: str = "cpu", top_k: int = 5) -> None:
        self.model, self.device = model.to(device).eval(), device
        self.top_k = top_k

    def preprocess(self, image: ImageInput | np.ndarray) -> torch.Tensor:
        cfg = self.model.config
        rgb = render(as_pil(image), cfg.image_size, cfg.background)  # (S, S, 3) uint8
        x = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)  # (3, S, S) in [0, 1]
        return (x - torch.tensor(cfg.pixel_mean)[:, None, None]) / torch.tensor(cfg.pixel_std)[:, None, None]


class MobileNetClassifier:
    """The pretrained ImageNet MobileNetV2 (``text.pipelines.classify_image``) with the same call shape."""

    def __init__(self, top_k: int = 5) -> None:
        self.top_k = top_k

    def __call__(self, inputs: Any, top_k: int | None = None) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        from omnigpt.checkpoints.encoders import classify_image

        single = not isinstance(inputs, list | tuple)
        items = [inputs] if single else list(inputs)
        out = [classify_image(as_pil(i), top_k=self.top_k if top_k is None else top_k) for i in items]
        return out[0] if single else out


def image_classification(model: str | None = None, device: str | None = None, top_k: int = 5,
                         **kwargs: Any) -> ViTClassifier | MobileNetClassifier:
    """The ``"image-classification"`` pipeline: an image-classify run directory (ViT or fine-tuned MobileNetV2), or
    the ImageNet MobileNetV2 (the default)."""
    if kwargs:
        raise TypeError(f"image-classification: unexpected options {sorted(kwargs)}")
    if model is None or model == MOBILENET:
        return MobileNetClassifier(top_k)
    loaded = load_pretrained(resolve_checkpoint(model), map_location=device or "cpu")
    if isinstance(loaded, MobileNetV2ForImageClassification):
        return FineTunedMobileNetClassifier(loaded, device or "cpu", top_k)
    if not isinstance(loaded, ViTForImageClassification):
        raise ValueError(f"{model}: not an image classifier (it holds a {type(loaded).__name__}); pass an "
                         f"image-classify run or {MOBILENET!r}")
    return ViTClassifier(loaded, device or "cpu", top_k)


class ImageGenerator:
    """An ``igpt`` checkpoint as a pipeline callable: class name → sampled images."""

    def __init__(self, model: IGPT, device: str = "cpu", temperature: float = 1.0) -> None:
        self.model, self.device, self.temperature = model.to(device).eval(), device, temperature

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.config.classes

    def generate(self, prompt: str, n: int = 1, seed: int | None = None,
                 temperature: float | None = None) -> list[Image.Image]:
        """``n`` grey PIL images of class ``prompt`` (ValueError for an unknown class)."""
        index = self.model.config.class_index(prompt)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"the number of images must be a positive integer, got {n!r}")
        t = self.temperature if temperature is None else temperature
        if t < 0:
            raise ValueError(f"temperature must be >= 0, got {t}")
        gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ()).item()))
        with torch.inference_mode():
            codes = self.model.sample(torch.full((n,), index, dtype=torch.long), t, generator=gen)
        pixels = dequantize(codes, self.model.config.palette).cpu().numpy()  # (n, S, S) uint8
        return [Image.fromarray(p, mode="L") for p in pixels]

    def __call__(self, prompt: str | Sequence[str], num_images: int = 1, seed: int | None = None,
                 temperature: float | None = None) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        if isinstance(prompt, str):
            return [{"image": im} for im in self.generate(prompt, num_images, seed, temperature)]
        return [[{"image": im} for im in self.generate(p, num_images, seed, temperature)] for p in prompt]


def text_to_image(model: str | None = None, device: str | None = None, temperature: float = 1.0,
                  **kwargs: Any) -> ImageGenerator:
    """The ``"text-to-image"`` pipeline over an igpt run directory (there is no default model)."""
    if kwargs:
        raise TypeError(f"text-to-image: unexpected options {sorted(kwargs)}")
    if model is None:
        raise ValueError("text-to-image needs model=<an igpt run directory> (omnigpt train "
                         "configs/tasks/igpt-fmnist.yaml)")
    loaded = load_pretrained(resolve_checkpoint(model), map_location=device or "cpu")
    if not isinstance(loaded, IGPT):
        raise ValueError(f"{model}: not an image generator (it holds a {type(loaded).__name__}); pass an igpt run")
    return ImageGenerator(loaded, device or "cpu", temperature)


__all__ = ["FineTunedMobileNetClassifier", "ImageGenerator", "MobileNetClassifier", "ViTClassifier", "as_pil",
           "image_classification", "text_to_image"]
