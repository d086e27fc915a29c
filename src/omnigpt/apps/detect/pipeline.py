"""``pipeline("object-detection", model=RUN)``: a ``detect`` run (Pix2Seq) finds objects in an image.

One image returns ``[{"score", "label", "box": {"xmin", "ymin", "xmax", "ymax"}}, ...]`` (best first, in the input
image's pixels, ``score >= threshold``), a list of images one such list per image — transformers' shapes. The image
is resized to the model's square input as in training; boxes are scaled back. There is no default model yet (train
one with ``configs/tasks/detect-scenes.yaml``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

from omnigpt.apps.common.images import as_pil
from omnigpt.apps.common.pipeline import Pipeline
from omnigpt.models.pix2seq import Detections, Pix2Seq


class ObjectDetectionPipeline(Pipeline):
    task = "object-detection"
    model_types = (Pix2Seq,)
    what, needs = "an object detector", "a detect run directory (omnigpt train configs/tasks/detect-scenes.yaml)"

    def options(self, threshold: float = 0.5) -> dict[str, Any]:
        if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
            raise ValueError(f"threshold must be a number in [0, 1], got {threshold!r}")
        return {"threshold": threshold}

    def preprocess(self, item: Any, index: int, **options: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        """(3, S, S) float in [0, 1], and the input's (width, height)."""
        img = as_pil(item).convert("RGB")
        S = self.model.config.vision.image_size
        small = img.resize((S, S), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0).permute(2, 0, 1), img.size

    def forward(self, batch: list[tuple[torch.Tensor, tuple[int, int]]], **options: Any) -> Detections:
        return self.model.detect(torch.stack([x for x, _ in batch]).to(self.device))  # (N, 3, S, S) in

    def postprocess(self, det: Detections, batch: list[Any], threshold: float) -> list[Any]:
        S = self.model.config.vision.image_size
        classes = self.model.config.classes
        out = []
        for b, (_, (w, h)) in enumerate(batch):
            found = []
            for (y0, x0, y1, x1), c, s in zip(det.boxes[b].tolist(), det.labels[b].tolist(),
                                              det.scores[b].tolist(), strict=True):
                if s >= threshold:
                    found.append({"score": s, "label": classes[c],
                                  "box": {"xmin": round(x0 * w / S), "ymin": round(y0 * h / S),
                                          "xmax": round(x1 * w / S), "ymax": round(y1 * h / S)}})
            out.append(sorted(found, key=lambda d: -d["score"]))
        return out


__all__ = ["ObjectDetectionPipeline"]
