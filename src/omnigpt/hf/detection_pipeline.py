"""``pipeline("object-detection", model=RUN)``: a ``detect`` run (Pix2Seq, ``models/pix2seq.py``) in Hugging Face's
shape, and ``draw_boxes`` to picture detections.

``object_detection(model, device, threshold=0.5)`` → ``detect(inputs, threshold=None)``. An input is a path, a PIL
image or a uint8/float array ((H, W) grey or (H, W, 3) RGB; floats in [0, 1]); the model sees it resized to its
input size (scenes are square: other shapes are squashed) and the boxes are scaled back to the input's pixels.
One input returns ``[{"score", "label", "box": {"xmin", "ymin", "xmax", "ymax"}}, ...]`` (best first, integer
pixel coordinates, xmax/ymax exclusive, only scores >= threshold) — what
``transformers.pipeline("object-detection")`` returns; a list returns one such list per input. Files that are not
images are refused with a ``ProcessorError`` (a ValueError) naming the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from omnigpt.checkpoints.pretrained import load_pretrained
from omnigpt.checkpoints.state import resolve_checkpoint
from omnigpt.hf.vision_pipelines import as_pil
from omnigpt.models.pix2seq import Pix2Seq


class ObjectDetector:
    """A Pix2Seq checkpoint as a pipeline callable."""

    def __init__(self, model: Pix2Seq, device: str = "cpu", threshold: float = 0.5) -> None:
        self.model, self.device, self.threshold = model.to(device).eval(), device, threshold

    def preprocess(self, image: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        """(3, S, S) float in [0, 1], and the input's (width, height)."""
        img = as_pil(image).convert("RGB")
        S = self.model.config.vision.image_size
        small = img.resize((S, S), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(small, dtype=np.float32) / 255.0).permute(2, 0, 1), img.size

    def __call__(self, inputs: Any, threshold: float | None = None) -> list[dict[str, Any]] | list[list[dict]]:
        single = not isinstance(inputs, list | tuple)
        items = [inputs] if single else list(inputs)
        if not items:
            raise ValueError("no inputs: pass an image or a non-empty list of images")
        thr = self.threshold if threshold is None else threshold
        if not isinstance(thr, int | float) or isinstance(thr, bool) or not 0 <= thr <= 1:
            raise ValueError(f"threshold must be a number in [0, 1], got {thr!r}")
        pre = [self.preprocess(i) for i in items]
        x = torch.stack([p for p, _ in pre]).to(self.device)  # (N, 3, S, S)
        with torch.inference_mode():
            det = self.model.detect(x)
        S = self.model.config.vision.image_size
        classes = self.model.config.classes
        out = []
        for b, (_, (w, h)) in enumerate(pre):
            found = []
            for (y0, x0, y1, x1), c, s in zip(det.boxes[b].tolist(), det.labels[b].tolist(),
                                              det.scores[b].tolist(), strict=True):
                if s >= thr:
                    found.append({"score": s, "label": classes[c],
                                  "box": {"xmin": round(x0 * w / S), "ymin": round(y0 * h / S),
                                          "xmax": round(x1 * w / S), "ymax": round(y1 * h / S)}})
            out.append(sorted(found, key=lambda d: -d["score"]))
        return out[0] if single else out


def object_detection(model: str | Path | None = None, device: str | None = None, threshold: float = 0.5,
                     **kwargs: Any) -> ObjectDetector:
    """The ``"object-detection"`` pipeline over a ``detect`` run directory (there is no default model)."""
    if kwargs:
        raise TypeError(f"object-detection: unexpected options {sorted(kwargs)}")
    if model is None:
        raise ValueError("object-detection needs model=<a detect run directory> (omnigpt train "
                         "configs/tasks/detect-scenes.yaml)")
    loaded = load_pretrained(resolve_checkpoint(model), map_location=device or "cpu")
    if not isinstance(loaded, Pix2Seq):
        raise ValueError(f"{model}: not an object detector (it holds a {type(loaded).__name__}); pass a detect run")
    return ObjectDetector(loaded, device or "cpu", threshold)


__all__ = ["ObjectDetector", "object_detection"]
