"""``pipeline("image-classification", model=...)``: an ``image-classify`` run (a ViT, or a fine-tuned MobileNetV2)
or, by default, torchvision's pretrained ImageNet MobileNetV2 (``"mobilenet-v2"``).

An input is a path, a PIL image or a uint8/float array ((H, W) grey or (H, W, 3) RGB; floats in [0, 1]). One input
returns ``[{"label", "score"}, ...]`` (``top_k``, best first), a list returns one such list per input — what
``transformers.pipeline("image-classification")`` returns. Files that are not images are refused with a
``ProcessorError`` (a ValueError) naming the file. Each model sees what it was trained on: the ViT the image in
grey, resized with antialiasing to its input size and normalised with the training set's statistics — the same
``to_pixels`` as training (Fashion-MNIST: a light object on black); a fine-tuned MobileNetV2 its training rendering
(``data.imagesets.render``: transparency on white, fitted into its square input, ImageNet normalisation); the
ImageNet MobileNetV2 its resize-256 / centre-crop-224 transform.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from omnigpt.apps.common.images import as_pil, to_pixels
from omnigpt.apps.common.pipeline import Pipeline, check_top_k, ranked
from omnigpt.data.imagesets import render
from omnigpt.models.mobilenet import MobileNetV2, MobileNetV2ForImageClassification
from omnigpt.models.vision import ViTForImageClassification

MOBILENET = "mobilenet-v2"


class ImageClassificationPipeline(Pipeline):
    task = "image-classification"
    model_types = (ViTForImageClassification, MobileNetV2ForImageClassification, MobileNetV2)
    default_model = MOBILENET
    what, needs = "an image classifier", f"an image-classify run or {MOBILENET!r}"

    @property
    def labels(self) -> tuple[str, ...]:
        if isinstance(self.model, MobileNetV2):  # the ImageNet model: its 1,000 classes
            return self.preprocessor.labels
        return tuple(self.model.config.labels)

    def options(self, top_k: int = 5) -> dict[str, Any]:
        return {"top_k": check_top_k(top_k, len(self.labels))}

    def preprocess(self, item: Any, index: int, top_k: int) -> torch.Tensor:
        img = as_pil(item)
        if isinstance(self.model, MobileNetV2):
            return self.preprocessor(img)[0]  # (3, 224, 224): torchvision's resize-256, centre-crop-224
        cfg = self.model.config
        if isinstance(self.model, MobileNetV2ForImageClassification):
            return to_pixels(render(img, cfg.image_size, cfg.background)[None], cfg)[0]  # (3, S, S)
        grey = np.asarray(img.convert("L"), dtype=np.uint8)[None]  # (1, H, W)
        return to_pixels(grey, cfg)[0]  # (1, S, S), resized as in training

    def forward(self, batch: list[torch.Tensor], top_k: int) -> torch.Tensor:
        out = self.model(torch.stack(batch).to(self.device))
        logits = out if isinstance(out, torch.Tensor) else out.logits
        return logits.float().softmax(-1).cpu()  # (N, K)

    def postprocess(self, probs: torch.Tensor, batch: list[Any], top_k: int) -> list[Any]:
        return ranked(probs, self.labels, top_k)


__all__ = ["MOBILENET", "ImageClassificationPipeline"]
