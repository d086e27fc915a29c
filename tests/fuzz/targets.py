"""The fuzzed readers: how each one is called on a case directory, and what counts as a clean refusal.

File readers must succeed or raise a ``ValueError`` (``GGUFError``, ``CheckpointError``, ...) whose message holds
the path of the file (for directory readers: of a file in the case directory). The server's upload decoders must
succeed or raise the ``APIError`` that becomes a 400, naming the parameter and not leaking a temporary path; an
image they accept must also survive the preprocessing that follows it in the server (``image_to_tensor``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import seeds as S


@dataclass(frozen=True)
class Target:
    name: str
    seeds: Callable[[], tuple[S.Seed, ...]]
    run: Callable[[Path], object]  # reads the case directory; returns anything on success
    clean: Callable[[BaseException, Path], str | None]  # None: a clean refusal; else why it is not


def _names_file(what: str) -> Callable[[BaseException, Path], str | None]:
    """A clean refusal is a ValueError whose message holds ``what`` (a path, relative to the case directory)."""

    def clean(e: BaseException, d: Path) -> str | None:
        if not isinstance(e, ValueError):
            return f"{type(e).__name__} is not a ValueError"
        if str(d / what).rstrip("/.") not in str(e):
            return f"the message does not name the file: {str(e)[:200]!r}"
        return None

    return clean


def _api_error(param: str) -> Callable[[BaseException, Path], str | None]:
    def clean(e: BaseException, d: Path) -> str | None:
        from omnigpt.serve.errors import APIError

        if not isinstance(e, APIError):
            return f"{type(e).__name__} is not an APIError (the server would answer 500)"
        if e.status != 400 or e.param != param or not e.message.startswith(param):
            return f"APIError {e.status} param={e.param!r} does not name {param!r}: {e.message[:200]!r}"
        if "/tmp" in e.message or "omnigpt-audio-" in e.message:
            return f"the message leaks a temporary path: {e.message[:200]!r}"
        return None

    return clean


# ------------------------------------------------------------------------------------------------------------
# Readers


def _gguf(d: Path) -> object:
    from omnigpt.checkpoints.gguf import load_gguf, read_metadata

    read_metadata(d / "tiny.gguf")  # every key, the vocabulary and merges arrays decoded
    return load_gguf(d / "tiny.gguf")


def _ct2(d: Path) -> object:
    from omnigpt.checkpoints.ctranslate2 import load_whisper

    return load_whisper(d)


def _torchvision(d: Path) -> object:
    from omnigpt.checkpoints.torchvision import load_mobilenet_v2

    return load_mobilenet_v2(d / "weights.pth", S.tiny_mobilenet_config())


def _safetensors(d: Path) -> object:
    from omnigpt.checkpoints.hf import load_gpt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "dropouts differ", "no score.weight": warnings are allowed
        return load_gpt(d)


def _image(d: Path) -> object:
    from omnigpt.serve.media import image_from_bytes
    from omnigpt.text.processors import image_to_tensor

    img = image_from_bytes((d / "upload").read_bytes(), "image")
    # What the server does next with an accepted image (processors.ImageProcessor): it must not fail there.
    for mode in ("RGB", "L"):
        image_to_tensor(img, 16, mode, (0.5,) * len(mode), (0.5,) * len(mode))  # type: ignore[arg-type]
    return img


def _audio(d: Path) -> object:
    from omnigpt.serve.media import audio_from_bytes

    return audio_from_bytes((d / "upload").read_bytes(), "file", 600.0)  # the server's default max_audio_seconds


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("gguf", S.gguf_seeds, _gguf, _names_file("tiny.gguf")),
    Target("ctranslate2", S.ct2_seeds, _ct2, _names_file("")),
    Target("torchvision", S.torchvision_seeds, _torchvision, _names_file("weights.pth")),
    Target("safetensors", S.hf_seeds, _safetensors, _names_file("")),
    Target("image", S.image_seeds, _image, _api_error("image")),
    Target("audio", S.audio_seeds, _audio, _api_error("file")),
)}
