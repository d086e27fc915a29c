"""``pipeline("object-detection")``: COCO objects in an image (SSD-MobileNetV2 by default), or a ``detect`` run's.

One image returns ``[{"score", "label", "box": {"xmin", "ymin", "xmax", "ymax"}}, ...]`` (best first, integer
pixels of the input image, clipped to it, ``score >= threshold``, default 0.5 as in transformers), a list of images
one such list per image — transformers' shapes.

* Default (``model`` None): ``"ssd-mobilenet-v2-coco"``, the quantized SSD-MobileNetV2 COCO TFLite model run in
  float32 (``models/ssd.py``): 80 COCO classes, at most 20 detections per image, each image resized to 300×300 by
  its preprocessor (``checkpoints/ssd.py``); its boxes are fractions of the image, scaled to its pixels here.
* ``model=RUN``: a Pix2Seq run trained on the composed scenes (``configs/tasks/detect-scenes.yaml``); the image is
  resized to its square input as in training and the boxes scaled back.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from omnigpt.apps.common.images import as_pil
from omnigpt.apps.common.pipeline import Pipeline
from omnigpt.models.pix2seq import Pix2Seq
from omnigpt.models.ssd import SSDMobileNetV2

DEFAULT_DETECTOR = "ssd-mobilenet-v2-coco"


class ObjectDetectionPipeline(Pipeline):
    task = "object-detection"
    model_types = (SSDMobileNetV2, Pix2Seq)
    default_model = DEFAULT_DETECTOR
    what = "an object detector"
    needs = f"{DEFAULT_DETECTOR!r} (the default) or a detect run directory (configs/tasks/detect-scenes.yaml)"

    def options(self, threshold: float = 0.5) -> dict[str, Any]:
        if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
        return {"threshold": threshold}

    def preprocess(self, item: Any, index: int, **options: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        """The model's (3, S, S) input and the image's (width, height)."""
        img = as_pil(item).convert("RGB")
        if isinstance(self.model, SSDMobileNetV2):
            x, size = self.preprocessor(img)  # (1, 3, 300, 300) in [-1, 1]
            return x[0], size
        S = self.model.config.vision.image_size
        small = img.resize((S, S), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0).permute(2, 0, 1), img.size  # [0, 1]

    def forward(self, batch: list[tuple[torch.Tensor, tuple[int, int]]], **options: Any
                ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per image (boxes (n, 4) as fractions of the image: y0, x0, y1, x1; class indices (n,); scores (n,))."""
        x = torch.stack([x for x, _ in batch]).to(self.device)  # (N, 3, S, S)
        if isinstance(self.model, SSDMobileNetV2):
            return [(d.boxes, d.labels, d.scores) for d in self.model.detect(x)]
        det, S = self.model.detect(x), self.model.config.vision.image_size
        return list(zip(det.boxes / S, det.labels, det.scores, strict=True))

    def postprocess(self, output: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], batch: list[Any],
                    threshold: float) -> list[Any]:
        cfg = self.model.config
        name = cfg.class_name if isinstance(self.model, SSDMobileNetV2) else cfg.classes.__getitem__
        out = []
        for (boxes, labels, scores), (_, (w, h)) in zip(output, batch, strict=True):
            found = [{"score": s, "label": name(c), "box": {"xmin": _pixel(x0, w), "ymin": _pixel(y0, h),
                                                            "xmax": _pixel(x1, w), "ymax": _pixel(y1, h)}}
                     for (y0, x0, y1, x1), c, s in zip(boxes.tolist(), labels.tolist(), scores.tolist(), strict=True)
                     if s >= threshold]
            out.append(sorted(found, key=lambda d: -d["score"]))
        return out


def _pixel(fraction: float, size: int) -> int:
    """A coordinate as a fraction of the image → an integer pixel inside it (SSD's boxes may stray outside)."""
    return min(max(round(fraction * size), 0), size)


__all__ = ["DEFAULT_DETECTOR", "ObjectDetectionPipeline"]
