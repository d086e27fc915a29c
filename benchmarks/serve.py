"""Serving throughput and latency: 1, 4 and 16 concurrent clients, batched vs one-at-a-time, one run.

The server is the real ``omnigpt serve`` in a subprocess (so the load generator does not share its interpreter),
two of them on the same model directory, measured in turn for each client count: ``--max-batch-size 16``
(requests that wait while the model is busy are stepped together) and ``--max-batch-size 1`` (the reference: a
plain queue, one request at a time). Clients are asyncio tasks with httpx, each sending its requests back to
back: ``/v1/completions``, a short prompt, greedy, a fixed ``max_tokens`` and ``ignore_eos``, so every request
generates exactly as many tokens in both modes.

Reported per (mode, clients): requests/s, generated tokens/s, p50/p95 request latency, mean batch size (from
``/health``), and the batched / one-at-a-time ratio of tokens/s. The default model is a small random GPT
(6 layers, 384 wide, a 2,048-token BPE) built in a temp directory; ``--model DIR`` benchmarks a real checkpoint.

Usage: ``python benchmarks/serve.py [--model DIR] [--max-tokens 32] [--clients 1 4 16] [--threads N]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from omnigpt.kernels.precision import describe_machine


def build_small_model(root: Path) -> Path:
    """A random 6-layer, 384-wide GPT-2 with a byte-level BPE trained on a little text, saved like a checkpoint."""
    from omnigpt import GPT, GPTConfig
    from omnigpt.checkpoints.pretrained import save_pretrained
    from omnigpt.text.tokenizer import BPETokenizer

    corpus = root / "corpus.txt"
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "server", "streams",
             "tokens", "to", "many", "clients"]
    gen = torch.Generator().manual_seed(0)
    text = " ".join(words[int(i)] for i in torch.randint(len(words), (20000,), generator=gen))
    corpus.write_text(text + "\n", encoding="utf-8")
    tok = BPETokenizer.train([corpus], vocab_size=2048, show_progress=False, min_frequency=1)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("gpt2", vocab_size=tok.vocab_size, block_size=512, n_layer=6, n_head=6,
                                    n_embd=384)).eval()
    return save_pretrained(model, root / "small-gpt", tokenizer=tok)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, batch: int, threads: int | None, window_ms: float) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "omnigpt", "serve", "--model", str(model), "--port", str(port),
           "--max-batch-size", str(batch), "--max-queue", "64", "--log-level", "warning",
           "--batch-window-ms", str(window_ms)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"omnigpt serve exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("omnigpt serve did not start within 180 s")


async def load(url: str, model_id: str, clients: int, per_client: int, max_tokens: int) -> dict[str, float]:
    """``clients`` tasks × ``per_client`` requests each; wall time, latencies and generated tokens."""
    prompts = ["the quick brown fox", "a lazy dog", "the server streams", "tokens to many clients"]
    latencies: list[float] = []
    tokens = 0

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal tokens
        for j in range(per_client):
            body = {"model": model_id, "prompt": prompts[(i + j) % len(prompts)], "max_tokens": max_tokens,
                    "temperature": 0, "ignore_eos": True}
            t0 = time.perf_counter()
            r = await http.post(url + "/v1/completions", json=body)
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
            tokens += r.json()["usage"]["completion_tokens"]

    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        before = (await http.get(url + "/health")).json()
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - t0
        after = (await http.get(url + "/health")).json()
    batches = after["batches_total"] - before["batches_total"]
    rows = after["batched_rows_total"] - before["batched_rows_total"]
    latencies.sort()
    return {"requests": len(latencies), "req_s": len(latencies) / wall, "tok_s": tokens / wall,
            "p50": statistics.median(latencies), "p95": latencies[max(0, round(0.95 * len(latencies)) - 1)],
            "batch": rows / max(1, batches), "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="checkpoint directory (default: a small random GPT)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--requests-per-client", type=int, default=None,
                    help="default: max(3, 32 // clients), so each level sends 32-48 requests")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads in each server (default 1: two servers and the clients share the machine; "
                         "oversubscribed torch threads spin and can run 10x slower)")
    ap.add_argument("--batch-window-ms", type=float, default=50.0, help="the batched server's --batch-window-ms")
    args = ap.parse_args()
    print(describe_machine(), flush=True)  # the CPU, its ISA and the peaks measured in this run

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_small_model(Path(tmp))
        print(f"model: {model}  max_tokens={args.max_tokens}  cpus={os.cpu_count()}  torch threads (server)="
              f"{args.threads or 'default'}")
        results: dict[tuple[str, int], dict[str, float]] = {}
        servers = {}
        try:
            for mode, batch in (("batched", 16), ("one-at-a-time", 1)):
                servers[mode] = start_server(model, batch, args.threads, args.batch_window_ms)
            model_id = httpx.get(servers["batched"][1] + "/v1/models", timeout=10).json()["data"][0]["id"]
            for _, url in servers.values():
                asyncio.run(load(url, model_id, 2, 1, 4))  # warm-up: first forward passes, allocator
            for c in args.clients:  # interleaved, so both modes see the same (shared, noisy) machine
                for mode, (_, url) in servers.items():
                    per = args.requests_per_client or max(3, 32 // c)
                    r = asyncio.run(load(url, model_id, c, per, args.max_tokens))
                    results[(mode, c)] = r
                    print(f"{mode:>14}  clients={c:>3}  requests={r['requests']:>3}  {r['req_s']:7.2f} req/s  "
                          f"{r['tok_s']:8.1f} tok/s  p50 {r['p50']:6.3f} s  p95 {r['p95']:6.3f} s  "
                          f"mean batch {r['batch']:5.2f}", flush=True)
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                proc.wait(timeout=30)
        print("\nbatched / one-at-a-time (tokens/s):")
        for c in args.clients:
            ratio = results[("batched", c)]["tok_s"] / results[("one-at-a-time", c)]["tok_s"]
            print(f"  clients={c:>3}: {ratio:5.2f}x   p95 latency {results[('batched', c)]['p95']:.3f} s vs "
                  f"{results[('one-at-a-time', c)]['p95']:.3f} s")


if __name__ == "__main__":
    main()
