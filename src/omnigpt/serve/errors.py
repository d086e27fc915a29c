"""Errors in OpenAI's shape, and the guards that keep bad input away from a 5xx.

Every failure leaves the server as ``{"error": {"message", "type", "param", "code"}}`` with the status OpenAI uses
(400 bad request, 401 bad key, 404 unknown model or route, 413 body too large, 429 overloaded). Two reasons this
matters beyond looks: the official client retries every 5xx (and 408/409/429) twice, so a 5xx for a client mistake
triples the load; and FastAPI's default 422 with a list of pydantic errors is a shape no OpenAI client understands.

Messages never echo the offending input (it may be huge, or hold lone surrogates that cannot even be encoded) and
never contain file paths or memory addresses: an unexpected exception becomes a fixed "internal error" message.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("omnigpt.serve")

# status -> OpenAI's error "type" for it
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
          404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class APIError(Exception):
    """An error to send to the client: HTTP status + OpenAI error fields (+ extra headers such as Retry-After)."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def _loc_to_param(loc: tuple[Any, ...]) -> str | None:
    """("body", "messages", 0, "content") -> "messages[0].content" (OpenAI names params this way)."""
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        elif "[" in str(p) or "-" in str(p) or "function-" in str(p):
            continue  # pydantic's union-branch tags ("list[str]", "function-after[...]") are not parameter names
        else:
            out += f".{p}" if out else str(p)
    return out or None


def validation_error(exc: RequestValidationError) -> APIError:
    """Pydantic's error list -> one 400 naming the first bad parameter (without echoing its value)."""
    errors = exc.errors()
    if not errors:
        return bad_request("invalid request body")
    first = errors[0]
    # A union reports one error per branch; the branch that got deepest into the value is the informative one.
    deepest = max(errors, key=lambda e: len(_loc_to_param(tuple(e.get("loc", ()))) or ""))
    if first.get("type") == "json_invalid":  # ctx["error"] is the decoder's message: a position, not the input
        detail = str((first.get("ctx") or {}).get("error", ""))[:200]
        return bad_request(f"We could not parse the JSON body of your request ({detail or 'invalid JSON'}).",
                           code="invalid_json")
    if first.get("type") in ("model_type", "model_attributes_type", "dict_type") and len(first.get("loc", ())) <= 1:
        return bad_request("The request body must be a JSON object.", code="invalid_json")
    first = deepest if _loc_to_param(tuple(first.get("loc", ()))) != _loc_to_param(tuple(deepest.get("loc", ()))) \
        else first
    param = _loc_to_param(tuple(first.get("loc", ())))
    if first.get("type") == "missing":
        return bad_request(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    # Only the first problem is described (a union reports one error per branch); the value is never echoed.
    return bad_request(f"Invalid value for '{param}': {first.get('msg', 'invalid value')}.", param=param,
                       code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    """Route every error path (ours, FastAPI's validation, Starlette's 404/405, the unexpected) to OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        if status == 404:
            err = APIError(404, f"Unknown request URL: {request.method} {request.url.path}.", code="unknown_url")
        elif status == 405:
            err = APIError(405, f"Method {request.method} is not allowed for {request.url.path}.",
                           code="method_not_allowed")
        elif status == 400:  # FastAPI's "There was an error parsing the body" (e.g. bytes that are not UTF-8)
            err = bad_request("We could not parse the JSON body of your request.", code="invalid_json")
        else:
            err = APIError(status, str(exc.detail) if isinstance(exc.detail, str) else "request failed")
        return JSONResponse(err.body(), status_code=err.status, headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return APIError(500, "The server had an internal error while processing your request.",
                        code="internal_error").response()


# ------------------------------------------------------------------------------------------------------------
# Body size limit (pure ASGI, so an oversized body is refused before anyone buffers or parses it)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


DRAIN_BYTES = 64 * 1024 * 1024  # an oversized body up to this size is read and dropped before the 413 goes out
DRAIN_SECONDS = 10.0  # ... for at most this long


class BodyLimitMiddleware:
    """Answer 413 when a request body exceeds ``max_bytes``: by its Content-Length, or while it streams in.

    Before answering, the rest of the body is read and dropped (up to ``DRAIN_BYTES`` / ``DRAIN_SECONDS``): a server
    that answers and closes while the client's upload still sits unread in its socket makes the kernel send a TCP
    reset, and the client, still sending, sees "connection reset" instead of the 413 (OpenAI's client then retries
    the upload twice). A client that sent ``Expect: 100-continue`` has sent no body yet and gets the 413 at once;
    a body larger than the drain bound gets it with ``connection: close``, as before.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def _reject(self, receive: Receive, send: Send, received: int, declared: int | None, *,
                      unsent: bool) -> None:
        """413; ``unsent``: no body bytes are on their way (all read, or the client awaits "100 Continue")."""

        async def drain() -> bool | None:  # True: all read; False: more than DRAIN_BYTES; None: the client left
            size = received
            while size <= DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request":
                    return None
                size += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return True
            return False

        drained: bool | None = unsent
        if not unsent and (declared is None or declared <= DRAIN_BYTES):
            try:
                drained = await asyncio.wait_for(drain(), DRAIN_SECONDS)
            except TimeoutError:
                drained = False
            if drained is None:
                return  # nobody to answer
        err = APIError(413, f"Request body too large: the limit is {self.max_bytes} bytes.",
                       code="request_too_large")
        body = json.dumps(err.body()).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if not drained:
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared: int | None = None
        expect_continue = False
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
            elif name == b"expect":
                expect_continue = value.strip().lower() == b"100-continue"
        if declared is not None and declared > self.max_bytes:
            await self._reject(receive, send, 0, declared, unsent=expect_continue)
            return
        # Read the whole (bounded) body now, then replay it to the app as one message.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client went away mid-body
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(receive, send, size, declared, unsent=not message.get("more_body", False))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # afterwards: the real channel (http.disconnect when the client leaves)

        await self.app(scope, replay, send)
