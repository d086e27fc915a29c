"""Shared by the serving tests: a small real model directory, and uvicorn serving an app on 127.0.0.1 in a thread.

The model is real in every part that matters to the server: a byte-level BPE trained on a small corpus (so any
Unicode round-trips and multi-byte characters split across tokens), a tiny GPT-2 trained for a few dozen steps on
the same corpus (so greedy output is ordinary text with end-of-text tokens in it, not noise), saved with
``save_pretrained`` and loaded back through ``load_served_model`` exactly as ``omnigpt serve`` does.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world! The server streams text to the page.",
    "A small model learns to say a few things: héllo, naïve café, 日本語, emoji 🙂.",
    "User: what is the capital of France?\nAssistant: Paris is the capital of France.",
]
BLOCK_SIZE = 512  # long enough that a generation outlasts a disconnect / queue-full check
_CACHE: dict[str, Path] = {}


def make_model_dir(root: Path) -> Path:
    """Train tokenizer + tiny model (about 2 s on one core) and save them with ``save_pretrained`` (cached)."""
    if "model" in _CACHE:
        return _CACHE["model"]
    from omnigpt import GPT, GPTConfig
    from omnigpt.checkpoints.pretrained import save_pretrained
    from omnigpt.text.tokenizer import EOT, BPETokenizer

    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 20), encoding="utf-8")
    tok = BPETokenizer.train([corpus], vocab_size=384, show_progress=False)
    eos = tok.eos_token_id
    stream: list[int] = []
    for _ in range(30):
        for s in SENTENCES:
            stream += tok.encode(s) + [eos]
    data = torch.tensor(stream)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("tiny-gpt2", vocab_size=tok.vocab_size, block_size=BLOCK_SIZE, n_embd=64,
                                    n_head=4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    T = 32
    for _ in range(100):  # enough for greedy continuations of the corpus sentences to be the sentences
        starts = torch.randint(0, len(data) - T - 1, (8,), generator=gen)
        x = torch.stack([data[s : s + T] for s in starts])
        loss = model(x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    out = root / "tiny-chat"
    save_pretrained(model, out, tokenizer=tok)
    assert EOT in tok.special_tokens
    _CACHE["model"] = out
    return out


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # never 0.0.0.0: tests serve this machine only
    return sock


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free 127.0.0.1 port in a thread; yield its base URL; stop it after."""
    import uvicorn

    sock = free_socket()
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` seconds pass (bounded, never forever)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


@contextmanager
def slowed(model: torch.nn.Module, seconds: float) -> Iterator[None]:
    """Make every forward of ``model`` take at least ``seconds`` longer, so a generation reliably outlasts the
    client actions a test times against it (hang up, fill the queue, press Stop) on a fast machine too. A GPT's
    backbone (``model.transformer``) is what decoding calls (``generate.decode._last_logits`` skips ``forward``),
    so that is the module slowed when there is one."""
    target = getattr(model, "transformer", model)
    forward = target.forward

    def slow_forward(*args: Any, **kwargs: Any) -> Any:
        time.sleep(seconds)
        return forward(*args, **kwargs)

    target.forward = slow_forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        del target.forward  # back to the class's forward
