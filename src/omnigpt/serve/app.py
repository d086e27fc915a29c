"""The FastAPI app: OpenAI-compatible routes over the batching engine, plus the chat page at ``/``.

Routes: ``GET /v1/models`` (and ``/v1/models/{id}``), ``POST /v1/completions``, ``POST /v1/chat/completions``
(``stream: true`` answers with server-sent events ending in ``data: [DONE]``), ``POST /v1/audio/transcriptions`` and
``POST /v1/embeddings`` (offline.py: registry models loaded on first use), ``GET /health`` and ``GET /``.
Several chat models can be served at once, each with its own engine; the request's ``model`` picks one. A chat
request with image/audio parts goes to a multimodal checkpoint's ``generate.multimodal`` path (one answer, on a
worker thread; streamed as a single chunk) — every other request to the batching engine.
The request path is thin: validate (schemas.py, then the semantic checks here), render the chat template,
tokenize with caps applied *before* tokenizing, check the context, queue rows on the engine, and turn engine
events into OpenAI responses or chunks. Errors leave in OpenAI's shape (errors.py); an error after a stream has
started goes out as a ``data: {"error": ...}`` chunk followed by ``[DONE]``, which the official client raises.

Reference: OpenAI's API reference; vLLM's ``entrypoints/openai`` for which fields a local server can honour.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse

from omnigpt.serve import schemas as S
from omnigpt.serve.engine import Engine, Event, Failed, Finished, Overloaded, Row, TextDelta
from omnigpt.serve.errors import APIError, BodyLimitMiddleware, install_error_handlers
from omnigpt.serve.images import ImageGenerationRequest, ImageModels, ImagesResponse, generate_images
from omnigpt.serve.model import (
    MultimodalPrompt,
    ServedModel,
    build_chat_prompt,
    build_completion_prompts,
    build_multimodal_prompt,
    has_media,
    sampling_params,
)
from omnigpt.serve.offline import OfflineModels, embeddings, transcription
from omnigpt.serve.settings import ServeSettings

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": S.ErrorResponse, "description": desc}
    for code, desc in [(400, "Bad request"), (401, "Missing or wrong API key"), (404, "Unknown model"),
                       (413, "Request body too large"), (429, "Queue full: retry after Retry-After seconds")]
}
# One server-sent event (OpenAPI before 3.2 describes a stream by the schema of each event): ``data`` is a JSON chunk,
# or ``[DONE]`` at the end.
_SSE = {"text/event-stream": {"schema": {"type": "object", "required": ["data"], "properties": {
    "data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer"}}}}}
# The multipart form of /v1/audio/transcriptions (the route reads it itself: media.parse_form), as OpenAI documents it.
_TRANSCRIPTION_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "WAV, FLAC or OGG audio"},
        "model": {"type": "string", "description": "a speech model this server has (default whisper-tiny.en)"},
        "language": {"type": "string", "description": "ISO-639-1 code, e.g. en"},
        "response_format": {"type": "string", "enum": ["json", "text", "verbose_json"]},
        "temperature": {"type": "number", "description": "only 0 (decoding is deterministic)"},
        "beam_size": {"type": "integer", "minimum": 1, "maximum": 10, "description": "extension: beam search"},
    }}}}}}


def create_app(served: ServedModel | Sequence[ServedModel], settings: ServeSettings | None = None,
               offline: OfflineModels | None = None, images: ImageModels | None = None) -> FastAPI:
    """An app serving one or several chat models (the first is the page's default) and ``settings.offline_models``
    (or ``offline``), plus ``images`` (iGPT runs: ``/v1/images/generations`` exists only with them); the engines'
    worker threads start and stop with the app's lifespan."""
    settings = settings or ServeSettings()
    all_served = [served] if isinstance(served, ServedModel) else list(served)
    if not all_served:
        raise ValueError("create_app needs at least one model to serve")
    by_name = {m.name: m for m in all_served}
    if len(by_name) != len(all_served):
        raise ValueError(f"two served models share a name: {[m.name for m in all_served]} (give --name)")
    offline = offline or OfflineModels(settings.offline_models)
    clash = set(by_name) & set(offline.names)
    if clash:
        raise ValueError(f"{', '.join(sorted(clash))} is both a chat model and an offline model name")
    engines = {m.name: Engine(m.model, m.tokenizer, max_batch_size=settings.max_batch_size,
                              max_queue=settings.max_queue, stop_token_ids=m.stop_token_ids,
                              batch_window=settings.batch_window_ms / 1000) for m in all_served}
    served = all_served[0]
    engine = engines[served.name]
    locks = {m.name: threading.Lock() for m in all_served}  # one multimodal answer at a time per model

    def lookup(name: str) -> tuple[ServedModel, Engine]:
        if name not in by_name:
            shown = name if len(name) <= 64 else name[:64] + "..."
            other = " (a speech/embedding model: use its endpoint)" if name in offline.names else ""
            raise APIError(404, f"The model '{shown}' does not exist{other}. This server serves "
                                f"{', '.join(repr(n) for n in by_name)}.", param="model", code="model_not_found")
        return by_name[name], engines[name]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for e in engines.values():
            e.start()
        try:
            yield
        finally:
            for e in engines.values():
                e.shutdown()

    app = FastAPI(title="omnigpt", version="1", summary="OpenAI-compatible API for omnigpt models",
                  lifespan=lifespan)
    app.state.engine, app.state.served, app.state.settings = engine, served, settings
    app.state.engines, app.state.offline = engines, offline
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=settings.api_key)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        html = resources.files("omnigpt.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(html, headers={"cache-control": "no-cache"})

    @app.get("/health", response_model=S.Health)
    async def health() -> S.Health:
        es = list(engines.values())
        return S.Health(model=served.name, models=list(by_name) + list(offline.names),
                        queued=sum(e.queued for e in es), running=sum(e.running for e in es),
                        requests_total=sum(e.requests_total for e in es),
                        cancelled_total=sum(e.cancelled_total for e in es),
                        rejected_total=sum(e.rejected_total for e in es),
                        batches_total=sum(e.batches_total for e in es),
                        batched_rows_total=sum(e.batched_rows_total for e in es))

    def cards() -> list[S.ModelCard]:
        return [m.card() for m in all_served] + offline.cards(served.created) + (images.cards() if images else [])

    @app.get("/v1/models", response_model=S.ModelList, responses=_ERRORS)
    async def list_models() -> S.ModelList:
        return S.ModelList(data=cards())

    @app.get("/v1/models/{model_id}", response_model=S.ModelCard, responses=_ERRORS)
    async def get_model(model_id: str) -> S.ModelCard:
        card = next((c for c in cards() if c.id == model_id), None)
        if card is None:
            lookup(model_id)  # raises the 404
        return card

    @app.post("/v1/completions", response_model=S.Completion,
              responses={**_ERRORS, 200: {"content": _SSE, "description": "A completion, or SSE chunks"}})
    async def completions(body: S.CompletionRequest, request: Request) -> Any:
        served, engine = lookup(body.model)
        prompts = build_completion_prompts(served, body, settings)
        params, stop = sampling_params(body), body.stop_list()
        n = body.n or 1
        queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        rows = [Row(ids, max_new, params, queue, index=p * n + j, stop=stop)
                for p, (ids, max_new) in enumerate(prompts) for j in range(n)]
        prompt_tokens = sum(len(ids) for ids, _ in prompts)
        return await _respond(request, engine, served, rows, queue, prompt_tokens, chat=False, stream=bool(body.stream),
                              include_usage=bool(body.stream_options and body.stream_options.include_usage))

    @app.post("/v1/chat/completions", response_model=S.ChatCompletion,
              responses={**_ERRORS, 200: {"content": _SSE, "description": "A chat completion, or SSE chunks"}})
    async def chat_completions(body: S.ChatCompletionRequest, request: Request) -> Any:
        served, engine = lookup(body.model)
        if served.multimodal is not None and has_media(body):
            prompt = await asyncio.to_thread(build_multimodal_prompt, served, body, settings)
            return await _media_answer(served, locks[served.name], body, prompt)
        ids, max_new = build_chat_prompt(served, body, settings)
        params = sampling_params(body)
        stop = list(dict.fromkeys(body.stop_list() + served.chat_template.stop))  # the template's stops always apply
        queue: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()
        rows = [Row(ids, max_new, params, queue, index=j, stop=stop) for j in range(body.n or 1)]
        return await _respond(request, engine, served, rows, queue, len(ids), chat=True, stream=bool(body.stream),
                              include_usage=bool(body.stream_options and body.stream_options.include_usage))

    @app.post("/v1/audio/transcriptions", response_model=S.Transcription | S.TranscriptionVerbose,
              responses={**_ERRORS, 200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                                          "description": "The transcription (json, verbose_json or text)"}},
              openapi_extra=_TRANSCRIPTION_FORM)
    async def audio_transcriptions(request: Request) -> Any:
        out = await transcription(offline, await request.body(), request.headers.get("content-type", ""),
                                  settings.max_audio_seconds)
        return PlainTextResponse(out) if isinstance(out, str) else out

    @app.post("/v1/embeddings", response_model=S.EmbeddingList, responses=_ERRORS)
    async def create_embeddings(body: S.EmbeddingRequest) -> S.EmbeddingList:
        return await embeddings(offline, body)

    if images is not None:
        @app.post("/v1/images/generations", response_model=ImagesResponse, responses=_ERRORS)
        async def images_generations(body: ImageGenerationRequest) -> ImagesResponse:
            return await generate_images(images, body)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema without the 422 it adds everywhere: this server answers validation errors with 400."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            for path in schema.get("paths", {}).values():
                for op in path.values():
                    op.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


# ------------------------------------------------------------------------------------------------------------
# Turning engine events into responses


async def _media_answer(served: ServedModel, lock: threading.Lock, body: S.ChatCompletionRequest,
                        prompt: MultimodalPrompt) -> Any:
    """One answer of a multimodal checkpoint about the request's images/audio (``generate.multimodal``)."""
    from omnigpt.generate.multimodal import generate_answers

    params = sampling_params(body)

    def run() -> tuple[str, int, int]:
        with lock:
            try:
                batch = served.processor(prompt.text, images=prompt.images, audio=prompt.audio)
            except ValueError as e:  # e.g. a clip longer than the model's audio window
                raise APIError(400, f"The media could not be prepared for this model: {str(e)[:200]}",
                               param="messages", code="invalid_value") from None
            text = generate_answers(served.multimodal, served.processor, batch, max_new_tokens=prompt.max_new_tokens,
                                    temperature=params.temperature, top_k=params.top_k, seed=params.seed)[0]
        return text, int(batch["input_ids"].shape[1]), len(served.tokenizer.encode(text))

    text, prompt_tokens, completion_tokens = await asyncio.to_thread(run)
    reason: S.FinishReason = "length" if completion_tokens >= prompt.max_new_tokens else "stop"
    cuts = [i for i in (text.find(s) for s in body.stop_list()) if i >= 0]
    if cuts:
        text, reason = text[: min(cuts)], "stop"
    rid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
    usage = S.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                    total_tokens=prompt_tokens + completion_tokens)
    if not body.stream:
        return S.ChatCompletion(id=rid, created=created, model=served.name, usage=usage, choices=[
            S.ChatChoice(index=0, message=S.AssistantMessage(content=text), finish_reason=reason)])

    def chunk(delta: S.ChatDelta, finish: Any = None) -> str:
        return _sse(S.ChatCompletionChunk(id=rid, created=created, model=served.name,
                                          choices=[S.ChatChunkChoice(index=0, delta=delta, finish_reason=finish)]))

    async def events() -> AsyncIterator[str]:
        yield chunk(S.ChatDelta(role="assistant", content=""))
        if text:
            yield chunk(S.ChatDelta(content=text))
        yield chunk(S.ChatDelta(), reason)
        if body.stream_options and body.stream_options.include_usage:
            yield _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": served.name,
                        "choices": [], "usage": usage.model_dump()})
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


def _submit(engine: Engine, rows: list[Row]) -> None:
    try:
        engine.submit(rows)
    except Overloaded as e:
        raise APIError(429, f"The server is overloaded ({engine.max_queue} requests waiting). Please retry after "
                            f"{e.retry_after} s.", code="queue_full",
                       headers={"Retry-After": str(e.retry_after), "x-should-retry": "true"}) from None


def _failure(event: Failed) -> APIError:
    if event.client_error:
        return APIError(400, event.message, code="invalid_request")
    return APIError(500, "The server had an error while generating: " + event.message, code="internal_error")


async def _respond(request: Request, engine: Engine, served: ServedModel, rows: list[Row],
                   queue: asyncio.Queue[tuple[int, Event]], prompt_tokens: int, *, chat: bool, stream: bool,
                   include_usage: bool) -> Any:
    _submit(engine, rows)
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    if stream:
        return StreamingResponse(_stream(rows, queue, rid, created, served.name, chat, prompt_tokens, include_usage),
                                 media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
    texts, reasons, completion_tokens = await _collect(request, rows, queue)
    usage = S.Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                    total_tokens=prompt_tokens + completion_tokens)
    order = sorted(texts)
    if chat:
        return S.ChatCompletion(id=rid, created=created, model=served.name, usage=usage, choices=[
            S.ChatChoice(index=i, message=S.AssistantMessage(content=texts[i]), finish_reason=reasons[i])
            for i in order])
    return S.Completion(id=rid, created=created, model=served.name, usage=usage, choices=[
        S.CompletionChoice(index=i, text=texts[i], finish_reason=reasons[i]) for i in order])


def _finish(reason: str) -> S.FinishReason:
    return "length" if reason == "length" else "stop"


async def _collect(request: Request, rows: list[Row],
                   queue: asyncio.Queue[tuple[int, Event]]) -> tuple[dict[int, str], dict[int, Any], int]:
    """Wait for every row to finish; if the client disconnects first, cancel the rows and give up."""
    texts: dict[int, list[str]] = {r.index: [] for r in rows}
    reasons: dict[int, Any] = {}
    tokens = 0

    async def consume() -> None:
        nonlocal tokens
        while len(reasons) < len(rows):
            index, event = await queue.get()
            if isinstance(event, TextDelta):
                texts[index].append(event.text)
            elif isinstance(event, Finished):
                reasons[index] = _finish(event.reason)
                tokens += event.completion_tokens
            elif isinstance(event, Failed):
                raise _failure(event)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    work, watch = asyncio.ensure_future(consume()), asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if work not in done:
            raise APIError(400, "client disconnected", code="client_disconnected")  # nobody reads this
        work.result()  # re-raise a Failed event as its APIError
    finally:
        watch.cancel()
        work.cancel()
        for row in rows:
            row.cancel()  # no-op for finished rows; stops the rest
    return {i: "".join(t) for i, t in texts.items()}, reasons, tokens


def _sse(obj: Any) -> str:
    data = obj.model_dump_json(exclude_none=False) if hasattr(obj, "model_dump_json") else json.dumps(obj)
    return f"data: {data}\n\n"


async def _stream(rows: list[Row], queue: asyncio.Queue[tuple[int, Event]], rid: str, created: int, model: str,
                  chat: bool, prompt_tokens: int, include_usage: bool) -> AsyncIterator[str]:
    """SSE chunks as the engine produces text; closing this generator (client gone) cancels the rows."""
    done, tokens = 0, 0

    def chunk(index: int, text: str | None, reason: Any = None, role: bool = False) -> str:
        if chat:
            delta = S.ChatDelta(role="assistant" if role else None, content=text)
            return _sse(S.ChatCompletionChunk(id=rid, created=created, model=model, choices=[
                S.ChatChunkChoice(index=index, delta=delta, finish_reason=reason)]))
        return _sse({"id": rid, "object": "text_completion", "created": created, "model": model,
                     "choices": [{"index": index, "text": text or "", "finish_reason": reason, "logprobs": None}]})

    try:
        if chat:
            for row in rows:
                yield chunk(row.index, "", role=True)
        while done < len(rows):
            index, event = await queue.get()
            if isinstance(event, TextDelta):
                yield chunk(index, event.text)
            elif isinstance(event, Finished):
                done += 1
                tokens += event.completion_tokens
                yield chunk(index, None if chat else "", _finish(event.reason))
            elif isinstance(event, Failed):
                yield f"data: {json.dumps(_failure(event).body())}\n\n"
                break
        else:
            if include_usage:
                usage = {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                         "total_tokens": prompt_tokens + tokens}
                obj = "chat.completion.chunk" if chat else "text_completion"
                yield _sse({"id": rid, "object": obj, "created": created, "model": model, "choices": [],
                            "usage": usage})
        yield "data: [DONE]\n\n"
    finally:
        for row in rows:
            row.cancel()


# ------------------------------------------------------------------------------------------------------------
# Optional API key


class APIKeyMiddleware:
    """401 in OpenAI's shape for /v1/* requests without ``Authorization: Bearer <api_key>``."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app, self.expected = app, api_key.encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/") and scope["method"] != "OPTIONS":
            header = dict(scope.get("headers", [])).get(b"authorization", b"")
            scheme, _, key = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(key.strip(), self.expected):
                message = ("Incorrect API key provided." if header else
                           "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.")
                err = APIError(401, message, code="invalid_api_key")
                await JSONResponse(err.body(), status_code=401,
                                   headers={"www-authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)
