"""Test helpers for the multimodal tests: a byte-level tokenizer with the interface ``Processor`` expects.

The real tokenizers (tokenizer.py) provide the same three methods; this stand-in keeps the processor tests
independent of them: ids 0..255 are bytes, special tokens are numbered after them and never come from text.
Also: running ``omnigpt train`` in subprocesses, killing them, and comparing runs (exact-resume tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch


class ByteTokenizer:
    def __init__(self) -> None:
        self.special: dict[str, int] = {"<|endoftext|>": 256}

    def encode(self, text: str, allowed_special: object = ()) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        inv = {v: k for k, v in self.special.items()}
        out, buf = [], bytearray()
        for i in ids:
            if i < 256:
                buf.append(i)
            else:
                out.append(buf.decode("utf-8", "replace") + inv[i])
                buf = bytearray()
        return "".join(out) + buf.decode("utf-8", "replace")

    def token_to_id(self, token: str) -> int:
        if token not in self.special:
            raise KeyError(token)  # as omnigpt's tokenizers do (HF's return None; Processor accepts both)
        return self.special[token]

    def add_special_tokens(self, tokens: list[str]) -> int:
        added = 0
        for t in tokens:
            if t not in self.special:
                self.special[t] = 256 + len(self.special)
                added += 1
        return added

    def __len__(self) -> int:
        return 256 + len(self.special)


# ------------------------------------------------------------------------------------------------------------
# Training runs in subprocesses (``omnigpt train``): started, waited on, killed, compared.

ROOT = Path(__file__).resolve().parents[1]
TIMING_KEYS = ("time", "tok_per_s")  # the only metrics that may differ between two runs of one recipe


def train_cmd(recipe: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "omnigpt", "train", str(recipe), *extra]


def train_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}


def start_training(recipe: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(train_cmd(recipe, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=train_env(), cwd=ROOT, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    """Poll until ``path`` exists; fail if the process exits first or the time runs out."""
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}")
        assert time.time() < deadline, f"timed out waiting for {path}"
        time.sleep(0.02)


def kill_after(path: Path, proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` as soon as ``path`` (a checkpoint's COMPLETE marker) appears: no handler, no last save."""
    wait_for(path, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def metric_rows(run: Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl without the wall-clock fields."""
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def checkpoint_weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run / "checkpoints" / f"step_{step:06d}" / "model.safetensors")


def assert_bit_identical(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], what: str) -> None:
    assert got.keys() == expected.keys(), f"{what}: different tensors saved"
    differ = [k for k in expected if not torch.equal(got[k], expected[k])]
    assert not differ, f"{what}: {len(differ)} of {len(expected)} tensors differ, e.g. {differ[:3]}"
