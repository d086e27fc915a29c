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

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from omnigpt.checkpoints.pretrained import load_pretrained
from omnigpt.checkpoints.state import resolve_checkpoint
from omnigpt.hf.vision_pipelines import as_pil
from omnigpt.models.pix2seq import Pix2Seq

PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))


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


def draw_boxes(image: np.ndarray | Image.Image, boxes: Sequence[Sequence[float]], labels: Sequence[str] = (),
               scores: Sequence[float] | None = None, truth: Sequence[Sequence[float]] = (), scale: int = 4,
               colors: Sequence[int] = ()) -> Image.Image:
    """The image enlarged ``scale`` times with true boxes in white and predicted ones in colour (label and score
    above). Boxes are y0 x0 y1 x1 in the image's pixels, ends exclusive; ``colors`` index ``PALETTE``."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img = img.convert("RGB")
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    for y0, x0, y1, x1 in truth:
        draw.rectangle([x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1], outline=(255, 255, 255), width=1)
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        color = PALETTE[(colors[i] if i < len(colors) else i) % len(PALETTE)]
        draw.rectangle([x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1], outline=color, width=2)
        text = labels[i] if i < len(labels) else ""
        if scores is not None:
            text = f"{text} {scores[i]:.2f}"
        if text:
            ty = max(0, y0 * scale - 11)
            draw.rectangle([x0 * scale, ty, x0 * scale + 6 * len(text) + 2, ty + 10], fill=color)
            draw.text((x0 * scale + 1, ty - 1), text, fill=(0, 0, 0))
    return img


__all__ = ["ObjectDetector", "draw_boxes", "object_detection"]
