"""``POST /v1/images/generations``: class-conditional image generation by iGPT checkpoints, in OpenAI's shape.

Served only when ``omnigpt serve`` is given an ``igpt`` run (``ImageModels``; the route does not exist otherwise).
Request (OpenAI's Images API): ``prompt`` — a class name the model was trained on (case and punctuation ignored;
anything else is a 400 that names the valid classes), ``model`` (default: the first image model), ``n`` (1–10),
``size`` (``"WxH"``: the model's native size, e.g. ``28x28``, or 256x256 / 512x512 / 1024x1024, enlarged with
nearest-neighbour so the pixels stay visible; default native), ``response_format`` ``b64_json`` (the default here:
this server keeps no files, so ``url`` is refused with a 400). Extensions: ``seed``, ``temperature``. Response:
``{"created", "data": [{"b64_json": <PNG>, "revised_prompt": <the class name>}]}``. Sampling runs on a worker
thread, one request per model at a time.
"""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from collections.abc import Sequence
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, Field

from omnigpt.serve import schemas as S
from omnigpt.serve.errors import APIError, bad_request

MAX_IMAGES = 10  # OpenAI's limit on n
LARGE_SIZES = (256, 512, 1024)


class ImageGenerationRequest(S._Strict):
    prompt: S.Text = Field(max_length=4000)
    model: S.Text | None = Field(default=None, max_length=256)
    n: int | None = Field(default=None, ge=1, le=MAX_IMAGES)
    size: S.Text | None = Field(default=None, max_length=32)
    response_format: Literal["b64_json", "url"] | None = None
    quality: S.Text | None = Field(default=None, max_length=32)
    style: S.Text | None = Field(default=None, max_length=32)
    user: S.Text | None = Field(default=None, max_length=512)
    seed: int | None = Field(default=None, ge=0, le=2**62)  # extension: reproducible samples
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)  # extension


class ImageData(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]


class ImageModels:
    """Named ``apps.igpt.pipeline.TextToImagePipeline`` objects (loaded iGPT runs)."""

    def __init__(self, generators: dict[str, Any]) -> None:
        if not generators:
            raise ValueError("ImageModels needs at least one image model")
        self.generators = dict(generators)
        self.names = tuple(self.generators)
        self._locks = {n: threading.Lock() for n in self.names}
        self.created = int(time.time())

    @classmethod
    def load(cls, runs: Sequence[str], names: Sequence[str | None] = (), device: str = "cpu") -> ImageModels:
        from pathlib import Path

        from omnigpt.apps.igpt.pipeline import TextToImagePipeline

        out = {}
        for i, run in enumerate(runs):
            name = (names[i] if i < len(names) else None) or Path(run).resolve().name
            out[name] = TextToImagePipeline(run, device)
        return cls(out)

    def cards(self) -> list[S.ModelCard]:
        return [S.ModelCard(id=n, created=self.created, modalities=["image"]) for n in self.names]

    def lookup(self, name: str | None) -> tuple[str, Any]:
        name = self.names[0] if name is None else name
        if name not in self.generators:
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise APIError(404, f"The model '{shown}' does not exist for /v1/images/generations. This server has: "
                                f"{', '.join(self.names)}.", param="model", code="model_not_found")
        return name, self.generators[name]


def _size(value: str | None, native: int) -> int:
    allowed = [native, *LARGE_SIZES]
    if value is None or value == "auto":
        return native
    w, sep, h = value.partition("x")
    if not sep or not w.isdigit() or w != h or int(w) not in allowed:
        raise bad_request(f"'size' must be one of {', '.join(f'{s}x{s}' for s in allowed)} (or auto).",
                          param="size", code="invalid_value")
    return int(w)


def _png_b64(img: Image.Image, size: int) -> str:
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


async def generate_images(models: ImageModels, body: ImageGenerationRequest) -> ImagesResponse:
    name, gen = models.lookup(body.model)
    if body.response_format == "url":
        raise bad_request("'response_format' url is not supported: this server keeps no files; use b64_json.",
                          param="response_format", code="unsupported_parameter")
    try:
        index = gen.model.config.class_index(body.prompt)
    except ValueError as e:
        raise bad_request(f"'prompt' must name a class this model draws: {', '.join(gen.classes)} "
                          f"({str(e).split(';')[0]}).", param="prompt", code="invalid_value") from None
    size = _size(body.size, gen.model.config.image_size)
    n = body.n or 1
    label = gen.classes[index]

    temperature = gen.defaults["temperature"] if body.temperature is None else body.temperature

    def run() -> list[str]:
        with models._locks[name]:  # the pipeline's call: one prompt → [{"image": PIL image}, ...]
            drawn = gen(label, num_images=n, seed=body.seed, temperature=temperature)
        return [_png_b64(d["image"], size) for d in drawn]

    encoded = await asyncio.to_thread(run)
    return ImagesResponse(created=int(time.time()),
                          data=[ImageData(b64_json=b, revised_prompt=label) for b in encoded])


__all__ = ["ImageGenerationRequest", "ImageModels", "ImagesResponse", "generate_images"]
