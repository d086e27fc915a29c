"""Planned matrix–vector products for batch-1 decoding: y = x Wᵀ + b for one row x, from ``nn.Linear``'s own weight.

Decoding one sequence is a chain of matrix–vector products, so its speed is the speed at which the weights are read.
On this project's CPU (AMD EPYC, 2 cores, MKL) ``F.linear`` on one row reads a row-major (out, in) fp32 weight at
~10 GB/s — MKL's "transposed" gemv runs on one core — while the machine reads ~18–20 GB/s: transformers' GPT-2
keeps its weights as Conv1D (in, out), whose gemv runs at ~18 GB/s, and so decoded faster in fp32 than omnigpt.
Rather than a second, transposed copy of every weight (2× the memory) or a different parameter layout (which would
change training), ``MatvecPlanner`` cuts the same product into ``k`` blocks of output rows and runs them as one
batched call, ``baddbmm(b_k, x (k, 1, in), W_k^T (k, in, out/k))``, which ATen spreads over the cores: ~20 GB/s
from the unchanged (out, in) storage (GPT-2 small's LM head, 50,257 × 768 fp32: 15 → 8 ms).

The values are bit-identical to ``F.linear``'s: each output is the same dot product computed by the same kernel, as
long as a block starts on one of the kernel's row-block boundaries (blocks are multiples of 16 rows; the rows left
over go through ``F.linear`` as one more call). The planner does not rely on that: the first time it sees a shape it
runs every cut once and keeps only those whose output equals ``F.linear``'s bit for bit, so greedy tokens cannot
change. It then measures in place — the next calls of that shape cycle through the surviving cuts (``k`` = 1 is
``F.linear`` itself) on the real weights, cold in cache as decoding reads them, ``repeats`` calls each — and keeps
the fastest by median, if it beats the plain call by 10%. This is ``kernels/matmul.py``'s per-shape planning for
one-row products.

``planned_decode(planner)`` turns it on for ``kernels.matmul.Linear`` in the current thread, only for one-row
inference inputs; ``generate`` swaps that class in for the model's ``nn.Linear``s (``use_planned_linears``: the
blocks' projections and the LM head) and wraps its model calls in it. Training, state dicts and every other call are
unchanged.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

BLOCKS: tuple[int, ...] = (1, 2, 4, 8, 16)  # candidate numbers of row blocks; 1 = plain F.linear
ROW_ALIGN = 16  # block heights are multiples of this (the gemv kernel's row blocking)
DTYPES = (torch.float32, torch.bfloat16)


def _block_rows(out_features: int, k: int) -> int:
    """Rows per block when the output rows are cut into k blocks (0 when too small to cut)."""
    rows = out_features // k // ROW_ALIGN * ROW_ALIGN
    return rows if rows >= 4 * ROW_ALIGN else 0


def blocked_linear(x2: Tensor, weight: Tensor, bias: Tensor | None, k: int) -> Tensor:
    """y (1, out) = x2 (1, in) Wᵀ + b as ``k`` row blocks in one batched call (+ one call for the leftover rows)."""
    if k == 1:
        return F.linear(x2, weight, bias)
    out_f, in_f = weight.shape
    s = _block_rows(out_f, k)
    r = s * k
    y = torch.empty(1, out_f, dtype=x2.dtype, device=x2.device)
    w = weight[:r].view(k, s, in_f).transpose(1, 2)  # (k, in, s): block j is rows [j·s, (j+1)·s) of W, transposed
    xs = x2.expand(k, 1, in_f)  # (k, 1, in), no copy
    if bias is None:
        torch.bmm(xs, w, out=y[:, :r].view(k, 1, s))
    else:
        torch.baddbmm(bias[:r].view(k, 1, s), xs, w, out=y[:, :r].view(k, 1, s))
    if r < out_f:  # leftover rows: one plain call, written in place
        if bias is None:
            torch.mm(x2, weight[r:].t(), out=y[:, r:])
        else:
            torch.addmm(bias[r:], x2, weight[r:].t(), out=y[:, r:])
    return y


@dataclass
class _Trial:
    """A shape being measured: the exact candidates and the time of each call so far."""

    candidates: list[int]
    times: dict[int, list[float]] = field(default_factory=dict)
    calls: int = 0


class MatvecPlanner:
    """Per-shape choice of row blocks for one-row products, measured in place. ``plans`` maps a key
    ("in×out/dtype/bias") to the chosen number of blocks."""

    def __init__(self, repeats: int = 5, plans: dict[str, int] | None = None) -> None:
        self.repeats = repeats
        self.plans: dict[str, int] = dict(plans or {})
        self._trials: dict[str, _Trial] = {}
        self._lock = threading.Lock()

    @staticmethod
    def applies(x: Tensor, weight: Tensor) -> bool:
        """One row, CPU, fp32 or bf16 weight in x's dtype, a contiguous (out, in) weight, no gradients."""
        return (x.device.type == "cpu" and x.dtype == weight.dtype and x.dtype in DTYPES and weight.dim() == 2
                and weight.is_contiguous() and x.numel() == weight.shape[1] and not torch.is_grad_enabled())

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """``F.linear(x, weight, bias)`` for x (…, in) holding one row, through this shape's plan (bit-identical).
        Inputs it does not apply to go to ``F.linear``."""
        if not self.applies(x, weight):
            return F.linear(x, weight, bias)
        out_f, in_f = weight.shape
        key = f"{in_f}x{out_f}/{str(x.dtype).removeprefix('torch.')}/{'bias' if bias is not None else 'nobias'}"
        k = self.plans.get(key)
        x2 = x.reshape(1, in_f)
        y = self._trial_call(key, x2, weight, bias) if k is None else blocked_linear(x2, weight, bias, k)
        return y.view(*x.shape[:-1], out_f)

    def _trial_call(self, key: str, x2: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        with self._lock:
            trial = self._trials.get(key)
            if trial is None:  # first sight: keep only the cuts that reproduce F.linear bit for bit
                ref = F.linear(x2, weight, bias)
                exact = [k for k in BLOCKS if k == 1 or (_block_rows(weight.shape[0], k)
                                                         and torch.equal(blocked_linear(x2, weight, bias, k), ref))]
                trial = self._trials[key] = _Trial(exact, {k: [] for k in exact})
                if len(exact) == 1:
                    self.plans[key] = 1
                    del self._trials[key]
                return ref
            k = trial.candidates[trial.calls % len(trial.candidates)]
            trial.calls += 1
        t0 = time.perf_counter()
        y = blocked_linear(x2, weight, bias, k)
        took = time.perf_counter() - t0
        with self._lock:
            if key in self._trials:
                trial.times[k].append(took)
                if all(len(v) >= self.repeats for v in trial.times.values()):
                    median = {c: statistics.median(v) for c, v in trial.times.items()}
                    best = min(median, key=median.__getitem__)
                    self.plans[key] = best if median[best] < 0.9 * median[1] else 1
                    del self._trials[key]
        return y


DEFAULT = MatvecPlanner()  # generate()'s planner: plans live as long as the process, like cudnn.benchmark's
_local = threading.local()


@contextlib.contextmanager
def planned_decode(planner: MatvecPlanner | None = DEFAULT) -> Iterator[None]:
    """Within the block (this thread only), ``kernels.matmul.Linear`` runs one-row inference products through
    ``planner`` (None: a no-op)."""
    previous = getattr(_local, "planner", None)
    _local.planner = planner
    try:
        yield
    finally:
        _local.planner = previous


def decode_planner() -> MatvecPlanner | None:
    """The planner of the enclosing ``planned_decode`` block in this thread, if any. None while ``torch.compile``
    traces (the compiled decode step, ``generate.fast``): the planner measures with wall-clock timers, which a graph
    cannot hold, and inductor picks its own kernels."""
    if torch.compiler.is_compiling():
        return None
    return getattr(_local, "planner", None)
