"""What the image applications share (image-classify, igpt, detect): any image input → a decoded PIL image
(``as_pil``, what every image pipeline accepts), uint8 images → a classifier's normalised input (``to_pixels``, the
same in training and in the pipeline), the fixed train/validation split of Fashion-MNIST's training images, and
batched prediction (logits + pooled features; igpt's classification accuracy of samples and Fréchet distance use the
same classifier)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from omnigpt.models.mobilenet import MobileNetClassifierConfig, MobileNetV2ForImageClassification
from omnigpt.models.vision import ImageClassifierConfig, ViTForImageClassification
from omnigpt.text.processors import ImageInput, ProcessorError, load_image
from omnigpt.train.task import evaluating

AnyClassifierConfig = ImageClassifierConfig | MobileNetClassifierConfig
AnyClassifier = ViTForImageClassification | MobileNetV2ForImageClassification


def to_pixels(images: Tensor | np.ndarray, config: AnyClassifierConfig) -> Tensor:
    """uint8 images → the model's normalised float32 input. ViT: (N, H, W) grey → (N, 1, S, S), resized to its
    input size; MobileNetV2: (N, S, S, 3) RGB (rendered at its size) → (N, 3, S, S) with ImageNet's mean/std."""
    if isinstance(config, MobileNetClassifierConfig):
        x = torch.tensor(np.asarray(images), dtype=torch.float32).div(255.0).permute(0, 3, 1, 2)  # (N, 3, S, S)
        mean, std = torch.tensor(config.pixel_mean)[:, None, None], torch.tensor(config.pixel_std)[:, None, None]
        return (x - mean) / std
    x = torch.tensor(np.asarray(images), dtype=torch.float32).div(255.0)[:, None]  # (N, 1, H, W) in [0, 1]
    size = config.vision.image_size
    if x.shape[-2:] != (size, size):
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x - config.pixel_mean) / config.pixel_std


def split_train_val(n: int, val_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of ``n`` training images: a permutation fixed by seed 0, val = its first ``val_size``."""
    perm = np.random.default_rng(0).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


@torch.no_grad()
def predict(model: AnyClassifier, pixels: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """(logits (N, K) float32, pooled features (N, C)) in batches, in eval mode."""
    with evaluating(model):
        dev = next(model.parameters()).device
        logits, feats = [], []
        for i in range(0, len(pixels), batch_size):
            out = model(pixels[i : i + batch_size].to(dev))
            logits.append(out.logits.float().cpu())
            feats.append(out.features.float().cpu())
    return torch.cat(logits), torch.cat(feats)


def as_pil(image: ImageInput | np.ndarray) -> Image.Image:
    """A path, PIL image or array → a decoded PIL image (arrays: (H, W) or (H, W, 1|3|4); uint8, or floats in
    [0, 1]). What every image pipeline accepts."""
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
            raise ProcessorError(f"an image array must be (H, W) or (H, W, 1|3|4), got shape {a.shape}")
        if a.dtype != np.uint8:
            a = (np.clip(a.astype(np.float64), 0.0, 1.0) * 255).round().astype(np.uint8)
        return Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a)
    if not isinstance(image, str | Path | Image.Image):
        raise ProcessorError(f"expected an image path, PIL image or array, got {type(image).__name__}")
    return load_image(image)
