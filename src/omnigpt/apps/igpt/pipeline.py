"""``pipeline("text-to-image", model=RUN)``: an ``igpt`` run draws images of a class.

``prompt`` is one of the run's class names (case and punctuation ignored; an unknown one is a ValueError naming the
valid classes). One prompt returns ``[{"image": PIL.Image}, ...]`` (``num_images`` grey images at the model's
size), a list of prompts one such list per prompt. There is no default model (train one with
``configs/tasks/igpt-fmnist.yaml``). ``generate`` is the same sampler for the server's ``/v1/images/generations``.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from omnigpt.apps.common.pipeline import Pipeline
from omnigpt.models.igpt import IGPT, dequantize


class TextToImagePipeline(Pipeline):
    task = "text-to-image"
    model_types = (IGPT,)
    what, needs = "an image generator", "an igpt run directory (omnigpt train configs/tasks/igpt-fmnist.yaml)"
    batch_size = 1  # each prompt is sampled with its own seeded generator, as when it is drawn alone

    @property
    def classes(self) -> tuple[str, ...]:
        return self.model.config.classes

    def options(self, num_images: int = 1, seed: int | None = None, temperature: float = 1.0) -> dict[str, Any]:
        if not isinstance(num_images, int) or isinstance(num_images, bool) or num_images < 1:
            raise ValueError(f"the number of images must be a positive integer, got {num_images!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        return {"num_images": num_images, "seed": seed, "temperature": temperature}

    def generate(self, prompt: str, n: int = 1, seed: int | None = None,
                 temperature: float | None = None) -> list[Image.Image]:
        """``n`` grey PIL images of class ``prompt`` (ValueError for an unknown class)."""
        opts = self.options(n, seed, self.defaults["temperature"] if temperature is None else temperature)
        with torch.inference_mode():
            rows = self.postprocess(self.forward([self.preprocess(prompt, 0)], **opts), [prompt], **opts)
        return [d["image"] for d in rows[0]]

    def preprocess(self, item: Any, index: int, **options: Any) -> int:
        if not isinstance(item, str):
            raise ValueError(f"input {index}: expected a class name (str), got {type(item).__name__}")
        return self.model.config.class_index(item)

    def forward(self, batch: list[int], num_images: int, seed: int | None, temperature: float) -> torch.Tensor:
        s = seed if seed is not None else int(torch.randint(0, 2**62, ()).item())
        gen = torch.Generator().manual_seed(s)
        classes = torch.full((num_images,), batch[0], dtype=torch.long)
        return self.model.sample(classes, temperature, generator=gen)  # (n, S, S) palette codes

    def postprocess(self, codes: torch.Tensor, batch: list[int], **options: Any) -> list[Any]:
        pixels = dequantize(codes, self.model.config.palette).cpu().numpy()  # (n, S, S) uint8
        images = [Image.fromarray(p, mode="L") for p in pixels]
        return [[{"image": im} for im in images]]


__all__ = ["TextToImagePipeline"]
