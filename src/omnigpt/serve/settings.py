"""``ServeSettings``: the server's limits and options (the ``omnigpt serve`` flags).

Its own module so that the request checks (model.py) and the routes (app.py) both read it without importing
each other: app.py imports model.py, and neither imports back.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServeSettings:
    """Server limits and options (the ``omnigpt serve`` flags)."""

    api_key: str | None = None  # when set, /v1/* needs "Authorization: Bearer <key>"
    max_batch_size: int = 8  # rows stepped together on the model
    max_queue: int = 32  # requests waiting for the model before new ones get 429
    batch_window_ms: float = 50.0  # after a batch, wait up to this long for the next one to fill (engine.py)
    max_body_bytes: int = 8 * 1024 * 1024  # larger bodies get 413 before they are parsed
    default_max_tokens: int = 256  # completion length when the request names none
    max_tokens_limit: int = 4096  # the largest max_tokens accepted (besides the context limit)
    offline_models: tuple[str, ...] = ()  # registry models for /v1/audio/transcriptions and /v1/embeddings
    max_audio_seconds: float = 600.0  # longer uploads get a 400 before decoding


__all__ = ["ServeSettings"]
