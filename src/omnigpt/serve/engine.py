"""The batching engine: one worker thread owns the model; requests wait in a bounded queue and run in batches.

How requests share the model (static batching over ``generate()``):

* A request becomes one ``Row`` per choice (``n``). ``submit`` appends its rows to the pending queue, or raises
  ``Overloaded`` (→ 429 with ``Retry-After``) when ``max_queue`` requests are already waiting.
* Whenever the model is free, the worker takes the oldest waiting request plus every other waiting request with
  the same sampling parameters, up to ``max_batch_size`` rows, and runs them as one batch of ``generate()`` (left-
  padded prompts, one KV cache). Requests that arrive while a batch runs wait for the next one, so under load the
  model steps many sequences at once and requests/s grows with concurrency; an idle server starts a lone request
  at once. After a batch of k rows ends, the next one waits up to ``batch_window`` seconds (and at most a tenth
  of the last generation's time) for k rows: the clients of the batch that just finished send their next
  requests within milliseconds, and without the wait the first one back would run alone while the others queue
  behind it for a whole generation. A lone client never waits (k = 1). Requests with a ``seed`` run in
  a batch of their own, so the same seed gives the same text however busy the server is.
* Each row ends on its own: a stop token, a stop string, its own ``max_tokens``, or its client going away
  (``Row.cancel()``, called when the HTTP connection closes) — ``Generation.stop(i)`` drops the row from the
  batch, and the batch ends when its last row does.

Results go back to the asyncio side through ``loop.call_soon_threadsafe`` into the request's ``asyncio.Queue``
as ``(choice index, event)`` with ``TextDelta``, ``Finished`` or ``Failed`` events. Continuous batching (joining
a running batch) would cut queueing latency further; it needs a KV cache with per-row positions, which
``generate()`` does not expose.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from omnigpt.generate.decode import generate
from omnigpt.generate.text import TextStream

log = logging.getLogger("omnigpt.serve")


@dataclass(frozen=True)
class SamplingParams:
    """What must be equal for two requests to share a batch (``generate()`` takes one value of each)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False  # no stop tokens: generate exactly max_tokens (unless a stop string ends it)


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    reason: str  # "stop" | "length" | "cancelled"
    completion_tokens: int


@dataclass(frozen=True)
class Failed:
    message: str
    client_error: bool  # True: the input was at fault (400); False: the server was (500)


Event = TextDelta | Finished | Failed


class Overloaded(Exception):
    """The queue is full; retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the server is busy; retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass(eq=False)
class Row:
    """One sequence to generate (one choice of one request) and the channel its events go back on."""

    prompt_ids: list[int]
    max_new_tokens: int
    params: SamplingParams
    events: asyncio.Queue[tuple[int, Event]]  # shared by the rows of one request; items are (index, event)
    index: int = 0  # the choice's index in the response
    stop: list[str] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """Stop generating for this row (its client went away); safe from any thread, any number of times."""
        self.cancelled.set()

    def _emit(self, event: Event) -> None:
        if self.loop is None:
            return
        # RuntimeError: the event loop has closed (server shutting down), so nobody is listening.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.events.put_nowait, (self.index, event))


@dataclass
class _Request:
    rows: list[Row]
    key: Any  # rows of requests with equal keys may share a batch


class Engine:
    """Owns ``model`` on a worker thread; ``submit`` queues rows of one request and returns at once."""

    def __init__(self, model: nn.Module, tokenizer: Any, *, max_batch_size: int = 8, max_queue: int = 32,
                 stop_token_ids: Sequence[int] = (), batch_window: float = 0.05) -> None:
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be >= 1")
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.stop_token_ids = list(stop_token_ids)
        self.block_size = int(model.config.block_size)
        self._pending: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self.batch_window = batch_window  # seconds to gather requests after a batch ends (0: never wait)
        self._gather_until = 0.0  # monotonic time until which a new batch waits for more rows...
        self._gather_rows = 0  # ...unless this many are already waiting
        self._thread: threading.Thread | None = None
        self._ids = itertools.count()
        self.running = 0  # rows in the batch on the model now
        self.requests_total = self.cancelled_total = self.rejected_total = 0
        self.batches_total = self.batched_rows_total = 0

    # --- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, name="omnigpt-engine", daemon=True)
            self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closing = True
            for req in self._pending:
                for row in req.rows:
                    row._emit(Failed("the server is shutting down", client_error=False))
            self._pending.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def queued(self) -> int:
        return len(self._pending)

    # --- the asyncio side -----------------------------------------------------------------------------------
    def submit(self, rows: list[Row]) -> None:
        """Queue the rows of one request (they run in the same batch); raise ``Overloaded`` when full."""
        if not rows or len(rows) > self.max_batch_size:
            raise ValueError(f"a request needs 1..{self.max_batch_size} rows, got {len(rows)}")
        loop = asyncio.get_running_loop()
        for row in rows:
            row.loop = loop
        params = rows[0].params
        key = (params, next(self._ids)) if params.seed is not None else params  # seeded: a batch of its own
        with self._cond:
            if self._closing:
                raise Overloaded(retry_after=5)
            if len(self._pending) >= self.max_queue:
                self.rejected_total += 1
                raise Overloaded(retry_after=max(1, len(self._pending) // max(1, self.max_batch_size)))
            self.requests_total += 1
            self._pending.append(_Request(rows, key))
            self._cond.notify()

    # --- the worker thread ----------------------------------------------------------------------------------
    def _take_batch(self) -> list[_Request] | None:
        with self._cond:
            while not self._pending and not self._closing:
                self._cond.wait()
            # Right after a batch, its clients send their next requests within milliseconds: wait briefly for
            # them, or the first one back would start alone and the rest would wait a whole generation for it.
            while not self._closing and sum(len(r.rows) for r in self._pending) < self._gather_rows:
                remaining = self._gather_until - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._closing:
                return None
            first = self._pending.popleft()
            batch, size = [first], len(first.rows)
            longest = max(len(r.prompt_ids) for r in first.rows)
            most = max(r.max_new_tokens for r in first.rows)
            if first.key == first.rows[0].params:  # unseeded: gather compatible requests, oldest first
                for req in list(self._pending):
                    # Prompts are left-padded to the longest, and all rows decode up to the largest max_tokens:
                    # the padded batch must still fit in the context.
                    p = max(longest, *(len(r.prompt_ids) for r in req.rows))
                    m = max(most, *(r.max_new_tokens for r in req.rows))
                    fits = size + len(req.rows) <= self.max_batch_size and p + m <= self.block_size
                    if req.key == first.key and fits:
                        self._pending.remove(req)
                        batch.append(req)
                        size, longest, most = size + len(req.rows), p, m
            return batch

    def _worker(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            rows = [row for req in batch for row in req.rows]
            self.running = len(rows)
            self.batches_total += 1
            self.batched_rows_total += len(rows)
            started = time.monotonic()
            try:
                self._run(rows)
                # Expect as many rows back as just ran; wait for them at most batch_window, and at most a tenth
                # of a generation (the cost of waiting must stay small next to what it saves the late ones).
                ended = time.monotonic()
                self._gather_rows = min(len(rows), self.max_batch_size) if len(rows) > 1 else 0
                self._gather_until = ended + min(self.batch_window, 0.1 * (ended - started))
            except Exception as e:  # keep serving: fail this batch's rows, not the server
                client = isinstance(e, ValueError)
                if not client:
                    log.exception("generation failed")
                for row in rows:
                    row._emit(Failed(str(e) if client else "generation failed on the server", client_error=client))
            finally:
                self.running = 0

    def _run(self, rows: list[Row]) -> None:
        params = rows[0].params
        live = [not row.cancelled.is_set() for row in rows]
        for i, row in enumerate(rows):
            if not live[i]:
                self.cancelled_total += 1
                row._emit(Finished("cancelled", 0))
        if not any(live):
            return
        texts = [TextStream(self.tokenizer, stop=row.stop) for row in rows]
        counts = [0] * len(rows)
        started = time.perf_counter()
        with torch.inference_mode():
            gen = generate(self.model, [row.prompt_ids for row in rows],
                           max_new_tokens=max(row.max_new_tokens for row in rows),
                           temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                           repetition_penalty=params.repetition_penalty,
                           stop_token_ids=[] if params.ignore_eos else self.stop_token_ids,
                           seed=params.seed)
            try:
                for i in range(len(rows)):
                    if not live[i]:
                        gen.stop(i)
                for step in gen:
                    if self._closing:  # shutting down: tell the clients instead of finishing the batch
                        for i, row in enumerate(rows):
                            if live[i]:
                                live[i] = False
                                row._emit(Failed("the server is shutting down", client_error=False))
                        break
                    for i, row in enumerate(rows):
                        if not live[i]:
                            continue
                        reason = self._advance(i, row, step, texts[i], counts)
                        if reason is None and row.cancelled.is_set():
                            reason = "cancelled"
                        if reason is not None:
                            live[i] = False
                            gen.stop(i)
                            if reason == "cancelled":
                                self.cancelled_total += 1
                            else:
                                tail = texts[i].flush()
                                if tail:
                                    row._emit(TextDelta(tail))
                            row._emit(Finished(reason, counts[i]))
                    if not any(live):
                        break
            finally:
                gen.close()
        for i, row in enumerate(rows):  # the generator ended without saying why (it should not): call it length
            if live[i]:
                row._emit(Finished("length", counts[i]))
        log.debug("batch of %d rows in %.3f s", len(rows), time.perf_counter() - started)

    def _advance(self, i: int, row: Row, step: Any, text: TextStream, counts: list[int]) -> str | None:
        """Feed row i's new token to its text stream; return why the row ends now, or None if it goes on."""
        token = step.tokens[i]
        reason = step.finish_reasons[i]
        if token is not None and reason != "stop":  # a stop token is reported but is not part of the text
            counts[i] += 1
            delta = text.push(token)
            if delta:
                row._emit(TextDelta(delta))
            if text.stopped:
                return "stop"
        elif token is not None:
            counts[i] += 1  # OpenAI counts the end-of-text token among the completion tokens
        if reason in ("stop", "length", "cancelled"):
            return reason
        if counts[i] >= row.max_new_tokens:
            return "length"
        return None
