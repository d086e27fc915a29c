"""Mixed load on the server: chat streams, transcriptions, embeddings and image requests at once, for a bounded time.

Starts the real ``omnigpt serve`` in a subprocess on 127.0.0.1 (a free port; loopback only) with small models built
in a temp directory: a tiny random GPT-2 + byte-level BPE (chat), a tiny untrained multimodal checkpoint (chat turns
with ``image_url`` parts), a tiny iGPT run (``/v1/images/generations``), and the offline ``whisper-tiny.en``
(``/v1/audio/transcriptions``) and ``all-minilm-l6-v2`` (``/v1/embeddings``). Then, for ``--seconds``, asyncio
clients send every kind of request concurrently:

* chat: streams read to ``[DONE]``; streams the client hangs up on after two chunks; non-streamed requests abandoned
  before the answer; malformed bodies (bad JSON, bad fields, a ``max_tokens`` over the limit);
* transcriptions (multipart WAVs): valid clips (rates 8-44.1 kHz, mono/stereo, json/text/verbose_json); malformed
  bytes (random, truncated, lying headers, empty, too long, not multipart, no file part); bodies over the server's
  ``--max-body-bytes`` (declared by Content-Length, and chunked without one);
* embeddings: valid (floats and base64) and refused inputs;
* images: iGPT generations (valid, malformed, an oversized prompt); chat turns with PNG data URLs (valid, garbage,
  truncated, a decompression-bomb header, remote URLs, a data URL over the body limit).

Checked (exit status 1 if any fails): no 5xx and no error chunk inside a stream; every 4xx body in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``; every request gets the status its kind expects (valid → 200,
malformed → 400/404, oversized → 413; 429 is allowed for model work); after the run the engines drain
(``running`` and ``queued`` back to 0) and ``/health`` answers 200; the server's RSS (sampled every 0.25 s from
``/proc``) grows by at most ``--rss-growth-mib`` from the warmed-up start to the end and by at most
``--rss-late-mib`` over the second half (a leak keeps growing; allocator warm-up does not).
``--schemathesis N`` then runs schemathesis against the server's own ``/openapi.json`` (N examples per operation,
positive and negative): no 5xx, every 4xx in OpenAI's shape; schema-conformance findings are reported too.

Printed: requests sent, counts by status code (and by request kind), p50/p95 latency per endpoint, RSS start / mid /
end / max, and the schemathesis cases and failures.

Usage: ``python benchmarks/serve_mixed.py [--seconds 60] [--schemathesis 20] [--threads 1]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wave
import zlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

CHAT, MM, IMAGE, WHISPER, MINILM = "tiny-chat", "tiny-omni", "tiny-igpt", "whisper-tiny.en", "all-minilm-l6-v2"
IMAGE_CLASSES = ("cat", "dog", "boot", "bag")
MAX_BODY = 1024 * 1024  # the server's --max-body-bytes: oversized uploads go just beyond it
MAX_AUDIO_SECONDS = 20.0  # the server's --max-audio-seconds
ERROR_KEYS = {"message", "type", "param", "code"}
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Hello world! The server streams text to the page.",
             "A small model learns to say a few things: héllo, naïve café, 日本語, emoji 🙂.",
             "What is the capital of France? Paris is the capital of France."]


# ------------------------------------------------------------------------------------------------------------
# Models (small, built in seconds)


def build_models(root: Path) -> dict[str, Path]:
    """Save the chat model, the multimodal checkpoint and the iGPT run under ``root``; their directories by name."""
    import torch

    from omnigpt import GPT, GPTConfig
    from omnigpt.checkpoints.pretrained import save_pretrained
    from omnigpt.models.igpt import IGPT, IGPTConfig
    from omnigpt.models.multimodal import MultimodalConfig, MultimodalGPT
    from omnigpt.text.processors import Processor, ProcessorConfig
    from omnigpt.text.tokenizer import BPETokenizer

    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 20), encoding="utf-8")
    tok = BPETokenizer.train([corpus], vocab_size=384, show_progress=False)
    torch.manual_seed(0)
    chat = GPT(GPTConfig.from_name("tiny-gpt2", vocab_size=tok.vocab_size, block_size=512, n_embd=64,
                                   n_head=4)).eval()
    save_pretrained(chat, root / CHAT, tokenizer=tok)

    mm_tok = BPETokenizer.train([corpus], vocab_size=300, show_progress=False)
    proc = Processor(mm_tok, ProcessorConfig())
    cfg = MultimodalConfig.from_name("tiny-omni", image_token_id=proc.image_token_id,
                                     audio_token_id=proc.audio_token_id)
    save_pretrained(MultimodalGPT(cfg).eval(), root / MM, Processor(mm_tok, ProcessorConfig(**cfg.processor_kwargs())))

    gpt = GPTConfig.from_name("tiny-gpt2", n_layer=2, n_head=2, n_embd=32)
    igpt = IGPT(IGPTConfig(gpt=gpt, palette=(0.0, 85.0, 170.0, 255.0), classes=IMAGE_CLASSES, image_size=4)).eval()
    save_pretrained(igpt, root / IMAGE)
    return {CHAT: root / CHAT, MM: root / MM, IMAGE: root / IMAGE}


# ------------------------------------------------------------------------------------------------------------
# Payloads


def wav_bytes(seconds: float, sr: int = 16000, channels: int = 1, seed: int = 0) -> bytes:
    """A 16-bit PCM WAV: a tone with a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * (220 + 40 * seed % 400) * t) + 0.02 * rng.standard_normal(t.size)
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2")
    pcm = np.repeat(pcm[:, None], channels, axis=1)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def png_bytes(width: int = 24, height: int = 20, seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb_header(width: int = 20_000, height: int = 20_000) -> bytes:
    """A small PNG whose header claims ``width × height`` pixels (a decompression bomb's shape, without the data)."""
    data = png_bytes(4, 4)
    ihdr = struct.pack(">II", width, height) + data[24:29]
    chunk = b"IHDR" + ihdr
    return data[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def malformed_wavs() -> list[tuple[str, bytes]]:
    good = wav_bytes(0.5)
    lying = bytearray(good)
    lying[40:44] = struct.pack("<I", 0x7FFFFFF0)  # data chunk claims 2 GiB
    zero_channels = bytearray(good)
    zero_channels[22:24] = b"\0\0"
    return [("random", random.Random(1).randbytes(4096)), ("truncated", good[: len(good) // 3]),
            ("header-only", good[:44]), ("lying-size", bytes(lying)), ("zero-channels", bytes(zero_channels)),
            ("empty", b""), ("png", png_bytes()), ("riff-garbage", b"RIFF\xff\xff\xff\xffWAVEfmt " + b"\xff" * 64),
            ("too-long", wav_bytes(MAX_AUDIO_SECONDS + 5, sr=8000))]


# ------------------------------------------------------------------------------------------------------------
# Recording and checking


def error_shape_problem(status: int, content: bytes) -> str | None:
    """None when ``content`` is OpenAI's error object, else what is wrong with it."""
    try:
        body = json.loads(content)
    except ValueError:
        return f"{status} body is not JSON: {content[:120]!r}"
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict) or set(body) != {"error"} or set(err) != ERROR_KEYS:
        return f"{status} body is not {{'error': {{message, type, param, code}}}}: {content[:200]!r}"
    if not (isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
            and all(err[k] is None or isinstance(err[k], str) for k in ("param", "code"))):
        return f"{status} error fields have wrong types: {content[:200]!r}"
    return None


@dataclass
class Stats:
    sent: int = 0
    by_status: Counter = field(default_factory=Counter)  # status code, or "disconnected" / a transport error
    by_kind: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    def problem(self, kind: str, what: str) -> None:
        self.problem_count += 1
        if len(self.problems) < 30:
            self.problems.append(f"[{kind}] {what}")

    def record(self, kind: str, endpoint: str, outcome: int | str, seconds: float) -> None:
        self.by_status[outcome] += 1
        self.by_kind[kind][outcome] += 1
        self.latency[endpoint].append(seconds)


@dataclass
class Kind:
    """One kind of request: its endpoint, the statuses it may get, and how to send it (returns the status)."""

    endpoint: str
    expect: tuple[int, ...]
    send: Callable[[httpx.AsyncClient, str, Stats, random.Random], Awaitable[int | str]]
    pause: float = 0.0  # seconds between requests of one client (cheap requests would otherwise flood the CPU)
    clients: int = 1


def _check_response(stats: Stats, kind: str, status: int, content: bytes) -> None:
    if status >= 500:
        stats.problem(kind, f"{status}: {content[:300]!r}")
    elif status >= 400:
        bad = error_shape_problem(status, content)
        if bad:
            stats.problem(kind, bad)


async def _post(http: httpx.AsyncClient, stats: Stats, kind: str, url: str, **kw: Any) -> int:
    r = await http.post(url, **kw)
    _check_response(stats, kind, r.status_code, r.content)
    return r.status_code


def _sse_problem(line: str) -> str | None:
    if not line.startswith("data: ") or line == "data: [DONE]":
        return None
    try:
        obj = json.loads(line[6:])
    except ValueError:
        return f"stream chunk is not JSON: {line[:120]!r}"
    if "error" in obj:
        return f"error inside a stream: {line[:300]!r}"
    return None


async def _stream_chat(http: httpx.AsyncClient, stats: Stats, kind: str, url: str, body: dict[str, Any],
                       hang_up_after: int | None) -> int | str:
    """Stream a chat completion; read it to [DONE], or hang up after ``hang_up_after`` content chunks."""
    async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            _check_response(stats, kind, r.status_code, r.content)
            return r.status_code
        chunks, done = 0, False
        async for line in r.aiter_lines():
            bad = _sse_problem(line)
            if bad:
                stats.problem(kind, bad)
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                chunks += 1
                if hang_up_after is not None and chunks >= hang_up_after:
                    return "disconnected"  # leaving the block closes the connection mid-stream
        if not done:
            stats.problem(kind, "stream ended without data: [DONE]")
        return 200


def _chat_body(rng: random.Random, **extra: Any) -> dict[str, Any]:
    return {"model": CHAT, "messages": [{"role": "user", "content": rng.choice(SENTENCES)}], "max_tokens": 16,
            "temperature": rng.choice([0, 0.7, 1.0]), "seed": rng.randrange(1000), **extra}


def make_kinds(oneshot_client: Callable[[], httpx.AsyncClient]) -> dict[str, Kind]:
    """Every kind of request the load sends. ``oneshot_client()`` gives a fresh client (own connection) for the
    requests that hang up, so closing it really drops the TCP connection under the server."""
    wav_ok = [wav_bytes(d, sr, ch, seed=i) for i, (d, sr, ch) in
              enumerate([(1.0, 16000, 1), (0.6, 8000, 1), (1.5, 44100, 2), (0.8, 22050, 1)])]
    wav_bad = malformed_wavs()
    png_ok = [png_bytes(w, h, seed=i) for i, (w, h) in enumerate([(24, 20), (64, 48), (7, 9), (300, 200)])]
    oversized_audio = wav_bytes(MAX_BODY / 16000 / 2 + 1, sr=16000)  # a valid WAV just over the body limit
    assert len(oversized_audio) > MAX_BODY

    async def chat_stream(http: httpx.AsyncClient, url: str, stats: Stats, rng: random.Random) -> int | str:
        body = _chat_body(rng, stream=True, stream_options={"include_usage": rng.random() < 0.5})
        return await _stream_chat(http, stats, "chat_stream", url, body, None)

    async def chat_hang_up(http: httpx.AsyncClient, url: str, stats: Stats, rng: random.Random) -> int | str:
        body = _chat_body(rng, stream=True, max_tokens=400, ignore_eos=True)
        async with oneshot_client() as own:
            return await _stream_chat(own, stats, "chat_hang_up", url, body, rng.choice([1, 2, 5]))

    async def chat_abandon(http: httpx.AsyncClient, url: str, stats: Stats, rng: random.Random) -> int | str:
        body = _chat_body(rng, max_tokens=400, ignore_eos=True)
        async with oneshot_client() as own:
            try:
                r = await asyncio.wait_for(own.post(url + "/v1/chat/completions", json=body), rng.uniform(0.05, 0.4))
            except TimeoutError:
                return "disconnected"
        _check_response(stats, "chat_abandon", r.status_code, r.content)
        return r.status_code

    async def chat_bad(http: httpx.AsyncClient, url: str, stats: Stats, rng: random.Random) -> int | str:
        bodies: list[Any] = [b'{"model": "tiny-chat", "messages": [', b"\xff\xfe not utf-8", b"[1, 2, 3]",
                             {"model": CHAT, "messages": [{"role": "wizard", "content": "hi"}]},
                             {"model": CHAT, "messages": []},
                             {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**6},
                             {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "n": 99},
                             {"model": CHAT, "messages": [{"role": "user", "content": "x" * 40_000}]},
                             {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
                             {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "tools": [{}]}]
        b = rng.choice(bodies)
        kw = {"content": b, "headers": {"content-type": "application/json"}} if isinstance(b, bytes) else {"json": b}
        return await _post(http, stats, "chat_bad", url + "/v1/chat/completions", **kw)

    def form(rng: random.Random, data: bytes, name: str = "clip.wav") -> dict[str, Any]:
        fields = {"model": WHISPER, "response_format": rng.choice(["json", "text", "verbose_json"])}
        return {"files": {"file": (name, data, "audio/wav")}, "data": fields}

    async def asr_valid(http: httpx.AsyncClient, url: str, stats: Stats, rng: random.Random) -> int | str:
        return await _post(http, stats, "asr_valid", url + "/v1/audio/transcriptions", **form(rng, rng.choice(wav_ok)))

    async def asr_malformed(http: httpx.AsyncClient, url: str, stats: Stats, rng: random.Random) -> int | str:
        u = url + "/v1/audio/transcriptions"
        pick = rng.randrange(len(wav_bad) + 4)
        if pick < len(wav_bad):
            return await _post(http, stats, "asr_malformed", u, **form(rng, wav_bad[pick][1]))
        if pick == len(wav_bad):  # not multipart
            return await _post(http, stats, "asr_malformed", u, json={"file": "x", "model": WHISPER})
        if pick == len(wav_bad) + 1:  # a form without the file part
            return await _post(http, stats, "asr_malformed", u, files={"model": (None, WHISPER)})
        if pick == len(wav_bad) + 2:  # a boundary that never appears
            return await _post(http, stats, "asr_malformed", u, content=b"--zzz\r\nnonsense",
                               headers={"content-type": "multipart/form-data; boundary=abc"})
        return await _post(http, stats, "asr_malformed", u, **form(rng, wav_ok[0]) | {"data": {"beam_size": "99"}})

    async def asr_oversized(http: httpx.AsyncClient, url: str, stats: Stats, rng: random.Random) -> int | str:
        u = url + "/v1/audio/transcriptions"
        if rng.random() < 0.5:  # declared by Content-Length
            return await _post(http, stats, "asr_oversized", u, **form(rng, oversized_audio))
        boundary = "mixedload"
        head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n"
                f"Content-Type: audio/wav\r\n\r\n").encode()

        async def chunks() -> AsyncIterator[bytes]:  # chunked: the limit must hold while the body streams in
            yield head
            for i in range(0, len(oversized_audio), 64 * 1024):
                yield oversized_audio[i : i + 64 * 1024]
            yield f"\r\n--{boundary}--\r\n".encode()

        return await _post(http, stats, "asr_oversized", u, content=chunks(),
                           headers={"content-type": f"multipart/form-data; boundary={boundary}"})

    async def embed_valid(http: httpx.AsyncClient, url: str, stats: Stats, rng: random.Random) -> int | str:
        texts = [rng.choice(SENTENCES) for _ in range(rng.randint(1, 8))]
        body = {"model": MINILM, "input": texts if rng.random() < 0.7 else texts[0],
                "encoding_format": rng.choice(["float", "base64"])}
        return await _post(http, stats, "embed_valid", url + "/v1/embeddings", json=body)

    async def embed_bad(http: httpx.AsyncClient, url: str, stats: Stats, rng: random.Random) -> int | str:
        body = rng.choice([{"model": MINILM, "input": []}, {"model": MINILM, "input": ["ok", ""]},
                           {"model": MINILM, "input": [1, 2, 3]}, {"model": MINILM, "input": "x", "dimensions": 7},
                           {"model": "text-embedding-3-small", "input": "x"}, {"input": "x"},
                           {"model": MINILM, "input": "x", "encoding_format": "int8"}])
        return await _post(http, stats, "embed_bad", url + "/v1/embeddings", json=body)

    async def image_gen(http: httpx.AsyncClient, url: str, stats: Stats, rng: random.Random) -> int | str:
        body = {"model": IMAGE, "prompt": rng.choice(IMAGE_CLASSES), "n": rng.randint(1, 3),
                "size": rng.choice([None, "4x4", "256x256"]), "seed": rng.randrange(100)}
        return await _post(http, stats, "image_gen", url + "/v1/images/generations", json=body)

    async def image_gen_bad(http: httpx.AsyncClient, url: str, stats: Stats, rng: random.Random) -> int | str:
        u = url + "/v1/images/generations"
        b = rng.choice([{"model": IMAGE, "prompt": "a purple giraffe"}, {"model": IMAGE, "prompt": "cat", "n": 11},
                        {"model": IMAGE, "prompt": "cat", "size": "300x300"}, {"model": IMAGE, "n": 1},
                        {"model": IMAGE, "prompt": "cat", "response_format": "url"},
                        {"model": "dall-e-3", "prompt": "cat"}, b'{"prompt": "cat",', b"\x00\x01binary"])
        kw = {"content": b, "headers": {"content-type": "application/json"}} if isinstance(b, bytes) else {"json": b}
        return await _post(http, stats, "image_gen_bad", u, **kw)

    async def image_gen_oversized(http: httpx.AsyncClient, url: str, stats: Stats, rng: random.Random) -> int | str:
        body = {"model": IMAGE, "prompt": "cat " * (MAX_BODY // 4 + 10)}
        return await _post(http, stats, "image_gen_oversized", url + "/v1/images/generations", json=body)

    def image_turn(url_value: str) -> dict[str, Any]:
        content = [{"type": "text", "text": "What is in the picture?"},
                   {"type": "image_url", "image_url": {"url": url_value}}]
        return {"model": MM, "messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0}

    async def image_chat(http: httpx.AsyncClient, url: str, stats: Stats, rng: random.Random) -> int | str:
        body = image_turn(data_url(rng.choice(png_ok)))
        if rng.random() < 0.3:
            return await _stream_chat(http, stats, "image_chat", url, body | {"stream": True}, None)
        return await _post(http, stats, "image_chat", url + "/v1/chat/completions", json=body)

    bad_images = [data_url(b"not an image at all"), data_url(png_ok[1][:200]), data_url(png_bomb_header()),
                  data_url(random.Random(2).randbytes(2048), "image/jpeg"), "data:image/png;base64,%%%not-base64",
                  "http://169.254.169.254/latest/meta-data", "data:image/png,rawbytes", data_url(b"")]

    async def image_chat_bad(http: httpx.AsyncClient, url: str, stats: Stats, rng: random.Random) -> int | str:
        body = image_turn(rng.choice(bad_images))
        return await _post(http, stats, "image_chat_bad", url + "/v1/chat/completions", json=body)

    big_image = data_url(random.Random(3).randbytes(MAX_BODY))

    async def image_chat_oversized(http: httpx.AsyncClient, url: str, stats: Stats, rng: random.Random) -> int | str:
        body = image_turn(big_image)
        return await _post(http, stats, "image_chat_oversized", url + "/v1/chat/completions", json=body)

    chat, asr, emb, gen = "/v1/chat/completions", "/v1/audio/transcriptions", "/v1/embeddings", "/v1/images/generations"
    model_busy = (200, 429)
    return {
        "chat_stream": Kind(chat, model_busy, chat_stream, clients=2),
        "chat_hang_up": Kind(chat, (200, 429), chat_hang_up, clients=2),
        "chat_abandon": Kind(chat, model_busy, chat_abandon, pause=0.1),
        "chat_bad": Kind(chat, (400, 404), chat_bad, pause=0.05),
        "asr_valid": Kind(asr, model_busy, asr_valid),
        "asr_malformed": Kind(asr, (400,), asr_malformed, pause=0.05),
        "asr_oversized": Kind(asr, (413,), asr_oversized, pause=0.1),
        "embed_valid": Kind(emb, model_busy, embed_valid),
        "embed_bad": Kind(emb, (400, 404), embed_bad, pause=0.05),
        "image_gen": Kind(gen, model_busy, image_gen),
        "image_gen_bad": Kind(gen, (400, 404), image_gen_bad, pause=0.05),
        "image_gen_oversized": Kind(gen, (413,), image_gen_oversized, pause=0.1),
        "image_chat": Kind(chat, model_busy, image_chat),
        "image_chat_bad": Kind(chat, (400,), image_chat_bad, pause=0.05),
        "image_chat_oversized": Kind(chat, (413,), image_chat_oversized, pause=0.1),
    }


# ------------------------------------------------------------------------------------------------------------
# The load


def _client(**kw: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(120, connect=10), **kw)


async def warm_up(url: str, kinds: dict[str, Kind], stats: Stats) -> None:
    """One request of each kind in turn (loads Whisper and MiniLM, first forwards), not counted in the stats."""
    rng = random.Random(0)
    async with _client() as http:
        for name, kind in kinds.items():
            if name not in ("chat_hang_up", "chat_abandon"):
                await kind.send(http, url, Stats(), rng)


async def mixed_load(url: str, seconds: float, kinds: dict[str, Kind] | None = None, seed: int = 0,
                     stats: Stats | None = None) -> Stats:
    """Every kind's clients send back to back until ``seconds`` pass; the stats of all responses."""
    kinds = kinds or make_kinds(_client)
    stats = stats or Stats()
    deadline = time.monotonic() + seconds

    async def client(name: str, kind: Kind, i: int) -> None:
        rng = random.Random(f"{seed}-{name}-{i}")
        # Its own connection, idle only for ``pause`` between requests: a shared pool may reuse a connection idle for
        # the server's keep-alive timeout (5 s) just as the server closes it, a client-side "connection reset".
        async with _client() as http:
            await requests(name, kind, rng, http)

    async def requests(name: str, kind: Kind, rng: random.Random, http: httpx.AsyncClient) -> None:
        while time.monotonic() < deadline:
            stats.sent += 1
            t0 = time.perf_counter()
            try:
                outcome = await kind.send(http, url, stats, rng)
            except httpx.TransportError as e:
                outcome = type(e).__name__
            elapsed = time.perf_counter() - t0
            stats.record(name, kind.endpoint, outcome, elapsed)
            if outcome != "disconnected" and outcome not in kind.expect:
                stats.problem(name, f"got {outcome}, expected {' or '.join(map(str, kind.expect))}")
            if kind.pause:
                await asyncio.sleep(kind.pause)

    await asyncio.gather(*(client(n, k, i) for n, k in kinds.items() for i in range(k.clients)))
    return stats


def drained_health(url: str, timeout: float = 30.0) -> dict[str, Any]:
    """``/health`` once no row is running or queued (bounded wait); raises if it never answers 200."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(url + "/health", timeout=10)
        if r.status_code != 200:
            raise AssertionError(f"/health answered {r.status_code}: {r.text[:200]}")
        h = r.json()
        if (h["running"] == 0 and h["queued"] == 0) or time.monotonic() > deadline:
            return h
        time.sleep(0.2)


def check(stats: Stats, health: dict[str, Any]) -> list[str]:
    """Everything that went wrong: the recorded problems, a 5xx count, rows left on the engines."""
    out = list(stats.problems)
    if stats.problem_count > len(stats.problems):
        out.append(f"... and {stats.problem_count - len(stats.problems)} more problems")
    fives = sum(n for s, n in stats.by_status.items() if isinstance(s, int) and s >= 500)
    if fives:
        out.append(f"{fives} responses with a 5xx status")
    if health["running"] or health["queued"]:
        out.append(f"rows left on the engines after the run: running={health['running']} queued={health['queued']}")
    return out


def rss_growth(samples: list[tuple[float, float]], start: float, end: float, wall: float) -> tuple[float, float]:
    """(end - start, growth over the second half): the median of the samples around the middle of the run to the
    median of the last tenth, so single-sample swings of the allocator do not count."""
    mid = [m for t, m in samples if 0.45 * wall <= t <= 0.55 * wall] or [start]
    last = [m for t, m in samples if t >= 0.9 * wall] or [end]
    return end - start, statistics.median(last) - statistics.median(mid)


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, round(q * len(s)) - 1))]


def _counts(c: Counter) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(c.items(), key=lambda kv: str(kv[0])))


def report(stats: Stats, seconds: float) -> str:
    lines = [f"requests sent: {stats.sent} in {seconds:.0f} s ({stats.sent / max(seconds, 1e-9):.1f}/s)",
             "by status: " + _counts(stats.by_status), "by kind:"]
    for name, c in stats.by_kind.items():
        lines.append(f"  {name:<22} " + _counts(c))
    lines.append("latency per endpoint (all kinds, s):")
    for ep, xs in sorted(stats.latency.items()):
        lines.append(f"  {ep:<26} n={len(xs):>5}  p50 {statistics.median(xs):7.3f}  p95 {percentile(xs, 0.95):7.3f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# The server process and its memory


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: dict[str, Path], threads: int, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "omnigpt", "serve", "--model", str(models[CHAT]), "--model", str(models[MM]),
           "--image-model", str(models[IMAGE]), "--offline-models", f"{WHISPER},{MINILM}",
           "--host", "127.0.0.1", "--port", str(port), "--threads", str(threads), "--log-level", "warning",
           "--max-body-bytes", str(MAX_BODY), "--max-audio-seconds", str(MAX_AUDIO_SECONDS),
           "--default-max-tokens", "32", "--max-tokens-limit", "512", "--max-queue", "64"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"omnigpt serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("omnigpt serve did not start within 180 s")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class RSSSampler:
    """Samples a process's RSS every ``interval`` seconds on a thread: (seconds since start, MiB)."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic() - self._t0, rss_mib(self.pid)))
            except (OSError, RuntimeError):
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)


# ------------------------------------------------------------------------------------------------------------
# Schemathesis against the server's own schema


SCHEMA_MODELS = {"/v1/chat/completions": CHAT, "/v1/completions": CHAT, "/v1/embeddings": MINILM,
                 "/v1/images/generations": IMAGE, "/v1/audio/transcriptions": WHISPER}


def _served_names(case: Any, path: str) -> None:
    """Name the served model (and an iGPT class, a model id) in every other generated case, chosen by the generated
    value's length so hypothesis stays deterministic: otherwise nearly every case stops at the unknown model's 404."""
    body = case.body if isinstance(case.body, dict) else {}
    if isinstance(body.get("model"), str) and path in SCHEMA_MODELS and len(body["model"]) % 2 == 0:
        body["model"] = SCHEMA_MODELS[path]
    prompt = body.get("prompt")
    if path.startswith("/v1/images") and isinstance(prompt, str) and len(prompt) % 2 == 0:
        body["prompt"] = IMAGE_CLASSES[len(prompt) % len(IMAGE_CLASSES)]
    ids = case.path_parameters or {}
    if isinstance(ids.get("model_id"), str) and len(ids["model_id"]) % 2 == 0:
        ids["model_id"] = CHAT


def _fuzz_operation(url: str, op: Any, mode: Any, max_examples: int, session: Any, out: dict[str, Any]) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis.checks import content_type_conformance, response_schema_conformance, status_code_conformance

    label = f"{op.method.upper()} {op.path}"

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def one(case: Any) -> None:
        _served_names(case, op.path)
        response = case.call(base_url=url, session=session, timeout=120)
        out["cases"] += 1
        out["by_status"][response.status_code] += 1
        out["by_operation"][label][response.status_code] += 1
        problem = None
        if response.status_code >= 500:
            problem = f"{response.status_code}: {response.content[:200]!r}"
        elif response.status_code >= 400:
            problem = error_shape_problem(response.status_code, response.content)
        if problem:
            out["failures"].append(f"{label} ({mode.value}): {problem}\n    {case.as_curl_command()[:400]}")
        for chk in (status_code_conformance, content_type_conformance, response_schema_conformance):
            try:
                case.validate_response(response, checks=[chk])
            except (Exception, BaseExceptionGroup) as e:  # schemathesis raises a group of failures
                out["conformance"][f"{label}: {chk.__name__}: {str(e).splitlines()[0][:120]}"] += 1

    with contextlib.suppress(Unsatisfiable):
        one()


def run_schemathesis(url: str, max_examples: int) -> dict[str, Any]:
    """Every operation of ``/openapi.json``, positive and negative cases: 5xx and non-OpenAI 4xx are failures;
    schemathesis' conformance checks (status codes, content types, response schemas) are reported beside them."""
    import requests
    import schemathesis

    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    out: dict[str, Any] = {"cases": 0, "by_status": Counter(), "failures": [], "conformance": Counter(),
                           "operations": 0, "by_operation": defaultdict(Counter)}
    session = requests.Session()
    for result in schema.get_all_operations():
        op = result.ok()
        out["operations"] += 1
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            _fuzz_operation(url, op, mode, max_examples, session, out)
    return out


def schemathesis_report(res: dict[str, Any]) -> str:
    lines = [f"schemathesis: {res['operations']} operations, {res['cases']} cases, "
             f"{len(res['failures'])} failures (5xx or not OpenAI's error shape)",
             "  by status: " + ", ".join(f"{k}: {v}" for k, v in sorted(res["by_status"].items()))]
    for label, c in res["by_operation"].items():
        lines.append(f"    {label:<34} " + ", ".join(f"{k}: {v}" for k, v in sorted(c.items())))
    lines += [f"  FAIL {f}" for f in res["failures"][:20]]
    if res["conformance"]:
        lines.append("  conformance findings (reported, not failures):")
        lines += [f"    {n} × {k}" for k, n in res["conformance"].most_common(15)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the mixed load runs")
    ap.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rss-growth-mib", type=float, default=400.0,
                    help="fail if RSS grows more than this from the start (models loaded) to the end; most of it "
                         "is the allocator's first minute under concurrency (about 250 MiB, then flat)")
    ap.add_argument("--rss-late-mib", type=float, default=80.0,
                    help="fail if RSS grows more than this over the second half of the run (a leak keeps growing; "
                         "the allocator's swings are about ±40 MiB)")
    ap.add_argument("--schemathesis", type=int, default=0, metavar="N",
                    help="then run schemathesis with N examples per operation and mode (0: skip)")
    args = ap.parse_args(argv)
    if not args.seconds > 0:
        ap.error("--seconds must be > 0")

    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="serve-mixed-") as tmp:
        t0 = time.perf_counter()
        models = build_models(Path(tmp))
        log = Path(tmp) / "server.log"
        proc, url = start_server(models, args.threads, log)
        print(f"server {url} (pid {proc.pid}) up after {time.perf_counter() - t0:.1f} s; cpus={os.cpu_count()}",
              flush=True)
        try:
            kinds = make_kinds(_client)
            asyncio.run(warm_up(url, kinds, Stats()))
            with RSSSampler(proc.pid) as rss:
                start = rss_mib(proc.pid)
                t1 = time.perf_counter()
                stats = asyncio.run(mixed_load(url, args.seconds, kinds, seed=args.seed))
                wall = time.perf_counter() - t1
                health = drained_health(url)
                end = rss_mib(proc.pid)
            print(report(stats, wall))
            problems += check(stats, health)
            growth, late = rss_growth(rss.samples, start, end, wall)
            samples = [m for _, m in rss.samples]
            print(f"RSS (MiB): start {start:.0f}  end {end:.0f}  max {max(samples):.0f}  growth {growth:+.0f}, "
                  f"over the second half {late:+.0f}  ({len(samples)} samples)")
            print("RSS over the run (MiB, every tenth): " + " ".join(
                f"{samples[min(len(samples) - 1, i * len(samples) // 10)]:.0f}" for i in range(11)))
            print(f"/health after: 200, requests_total={health['requests_total']} "
                  f"cancelled_total={health['cancelled_total']} rejected_total={health['rejected_total']} "
                  f"running={health['running']} queued={health['queued']}")
            if growth > args.rss_growth_mib:
                problems.append(f"RSS grew {growth:.0f} MiB over the run (bound {args.rss_growth_mib:.0f})")
            if late > args.rss_late_mib:
                problems.append(f"RSS grew {late:.0f} MiB over the second half of the run (bound "
                                f"{args.rss_late_mib:.0f}): a leak keeps growing")
            if args.schemathesis:
                t2 = time.perf_counter()
                res = run_schemathesis(url, args.schemathesis)
                print(schemathesis_report(res) + f"\n  ({time.perf_counter() - t2:.0f} s)")
                problems += res["failures"]
                if httpx.get(url + "/health", timeout=10).status_code != 200:
                    problems.append("/health is not 200 after schemathesis")
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            server_log = log.read_text(errors="replace")
        tracebacks = server_log.count("Traceback")
        if tracebacks:
            problems.append(f"the server logged {tracebacks} tracebacks:\n{server_log[-3000:]}")
    if problems:
        print("\nPROBLEMS:\n" + "\n".join(f"- {p}" for p in problems))
        return 1
    print("\nOK: no 5xx, every 4xx in OpenAI's error shape, engines drained, /health 200, RSS bounded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
