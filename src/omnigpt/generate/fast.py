"""The decode step as one function over a static KV cache, compiled as one graph (gpt-fast style).

``generate``'s generic path calls ``model(...)`` for every new token: one Python call and ATen dispatch per op —
thousands per token (views included) around SmolLM2's 121 matrix–vector products. With int4 weights on 2 AVX2 cores
those ops take ~40% of a step. ``DecodeSession`` calls the same ``model.forward`` on the same weights (the model
trusts its input and never syncs with the host: ``generate`` checked the input) in a form ``torch.compile`` can
turn into one graph:

* **Static cache**: each layer's keys and values live in a preallocated (B, nkv, L + 1, hs) tensor; a step writes
  slot ``pos`` in place (``models.kv_cache.StaticKVCache``: ``index_copy_``) and attends over the view [0, pos] —
  no copy, no mask (one new token may see every key before it). The spare slot keeps that view always shorter than
  the buffer (see below).
* **One function** (``decode_step``): ``model(ids, past_key_values=static caches, logits_to_keep=1)`` for a chunk
  (B, T) at positions [pos, pos + T). The prompt (T = P from position 0) and each decode step (T = 1) use it.
* **Compiled** (``compile=True`` or a ``torch.compile`` mode name): ``torch.compile(decode_step, dynamic=True,
  fullgraph=True)`` makes the decode step one inductor graph (norms, RoPE, SiLU·up, residual adds and dtype casts
  fused; int4/int8 products stay ATen's packed kernels, fp32 ones MKL's). ``pos`` and the cache length are
  symbolic, so one compilation serves every step and every generation length (parameters keep static shapes,
  dynamo's default); batch size 1 is specialised, other sizes compile once more. If the view [0, pos] could span
  the whole buffer, dynamo would specialise that case and compile again for the last step; the spare slot avoids
  it. Compiling takes ~40 s once per process, model and mode (~15 s when inductor's on-disk cache already holds
  the graph; ``DecodeSession.compile_seconds``) and saves ~4 ms per token on SmolLM2 int4 (2 AVX2 cores), so it
  pays after thousands of tokens — a server, a long run — and is opt-in (``generate(..., compile=True)``); by
  default ``generate`` keeps its generic path, which the session's *eager* step does not beat (the same kernels:
  what compiling removes is the overhead between them). If compiling fails (no C++ compiler, an op inductor
  cannot lower) the session warns once and runs eagerly — same results, no crash. The prompt is always encoded
  eagerly: its length varies from call to call.

Exactness: the eager step is the generic path's ``model(...)`` over another cache — same modules, order, kernels and
(at batch 1) the same bit-identical ``kernels.matvec`` plan — so its logits equal the generic path's bit for bit;
the compiled step fuses element-wise ops, which moves logits by float rounding (~1e-6 relative in fp32; bf16
activations of the int4/int8 kernels round more). ``tests/test_decode_fast.py`` checks both against the full forward.

Reference: gpt-fast ``generate.py`` (``decode_one_token`` compiled once) and ``model.py`` (``KVCache.update`` with
``index_put``), here without a fixed maximum length.
"""

from __future__ import annotations

import time
import warnings
import weakref
from typing import Any

import torch
from torch import Tensor, nn

from omnigpt.kernels.matmul import use_planned_linears
from omnigpt.kernels.matvec import DEFAULT as MATVEC
from omnigpt.kernels.matvec import MatvecPlanner, planned_decode
from omnigpt.models.gpt import GPT
from omnigpt.models.kv_cache import StaticKVCache


def decode_step(model: GPT, k_cache: list[Tensor], v_cache: list[Tensor], ids: Tensor, pos: int) -> Tensor:
    """Logits (B, V) after the last of ``ids`` (B, T), the tokens at positions [pos, pos + T); their keys and values
    go into ``k_cache[i]``/``v_cache[i]`` (B, nkv, L + 1, hs) of each layer i, slots [pos, pos + T). The function
    ``torch.compile`` traces: the model's own forward over static caches."""
    caches = [StaticKVCache(k, v, pos) for k, v in zip(k_cache, v_cache, strict=True)]
    return model(ids, past_key_values=caches, logits_to_keep=1).logits[:, -1]  # (B, V)


def supports(model: nn.Module) -> bool:
    """Whether the session may run ``model``: an omnigpt ``GPT`` whose forward (and its backbone's) is the class's
    own — not overridden by a subclass or patched on the instance (tests slow a backbone down that way; such a
    model keeps the generic path, whose every call reaches the patch)."""
    return (isinstance(model, GPT) and type(model).forward is GPT.forward and "forward" not in vars(model)
            and "forward" not in vars(model.transformer))


_COMPILED: dict[str, Any] = {}  # mode → torch.compile(decode_step): one dynamo cache per process, guarded per model
_FAILED: set[str] = set()  # modes whose compilation failed in this process: not tried again
_WARM: weakref.WeakKeyDictionary[nn.Module, set[tuple[str, int]]] = weakref.WeakKeyDictionary()  # compiled (mode, B)


def _compiled(mode: str) -> Any:
    if mode not in _COMPILED:
        _COMPILED[mode] = torch.compile(decode_step, dynamic=True, fullgraph=True,
                                        mode=None if mode == "default" else mode)
    return _COMPILED[mode]


class DecodeSession:
    """A static cache for ``batch`` unpadded sequences of up to ``length`` positions, and the step that fills it.

    ``prefill(ids)`` encodes a prompt (B, P) from position 0, eagerly; ``step(tok)`` appends one token per row (B,)
    and returns the next logits (B, V) — through the compiled step when ``compile`` is True (inductor's default
    mode) or a ``torch.compile`` mode name ("max-autotune-no-cudagraphs", ...) and compiling works, else eagerly.
    ``keep_rows(index)`` drops finished rows. ``compile_seconds``: the time the first compiled step took when this
    session compiled the graph (0 when it was already compiled for this model, mode and batch size)."""

    def __init__(self, model: GPT, batch: int, length: int, *, compile: bool | str = False,
                 planner: MatvecPlanner = MATVEC) -> None:
        cfg = model.config
        dtype = model.transformer.wte.weight.dtype  # the activations' dtype: what an eager KVCache would hold
        device = model.transformer.wte.weight.device
        shape = (batch, cfg.kv_heads, length + 1, cfg.head_size)  # + 1: the spare slot (module docstring)
        # One tensor per layer, not views of one buffer: aliased inputs make a compiled graph copy whole caches.
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.n_layer)]
        self.model, self.length, self.pos, self.planner = model, length, 0, planner
        use_planned_linears(model)  # eager batch-1 steps: one-row products through the matvec plan
        self.mode = "" if compile is False else "default" if compile is True else str(compile)
        self.compile_seconds = 0.0

    @property
    def compiled(self) -> bool:
        """Whether steps run (or will try to run) through the compiled graph."""
        return bool(self.mode) and self.mode not in _FAILED

    def _eager(self, ids: Tensor) -> Tensor:
        with planned_decode(self.planner):  # batch 1: fp32 products through the bit-identical matvec plan
            return decode_step(self.model, self.k, self.v, ids, self.pos)

    def prefill(self, ids: Tensor) -> Tensor:
        """Encode ``ids`` (B, P) into the cache from position 0 (what was there is overwritten); logits (B, V)."""
        if ids.shape[1] > self.length:
            raise ValueError(f"prompt of {ids.shape[1]} tokens does not fit a {self.length}-position session")
        self.pos = 0
        logits = self._eager(ids)
        self.pos = ids.shape[1]
        return logits

    def step(self, tok: Tensor) -> Tensor:
        """Append one token per row, ``tok`` (B,); the logits (B, V) of the next position."""
        if self.pos >= self.length:
            raise ValueError(f"decode session is full ({self.length} positions)")
        ids = tok.view(-1, 1)  # (B, 1)
        logits = self._compiled_step(ids) if self.compiled else None
        if logits is None:
            logits = self._eager(ids)
        self.pos += 1
        return logits

    def _compiled_step(self, ids: Tensor) -> Tensor | None:
        warm = _WARM.setdefault(self.model, set())
        key = (self.mode, ids.shape[0])
        t0 = time.perf_counter()
        try:
            logits = _compiled(self.mode)(self.model, self.k, self.v, ids, self.pos)
        except Exception as e:  # no C++ compiler, an op inductor cannot lower, a graph break, ...
            _FAILED.add(self.mode)
            warnings.warn(f"torch.compile of the decode step (mode {self.mode}) failed, decoding eagerly instead: "
                          f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}",
                          RuntimeWarning, stacklevel=3)
            return None
        if key not in warm:
            warm.add(key)
            self.compile_seconds = time.perf_counter() - t0
        return logits

    def keep_rows(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (finished sequences leave the batch)."""
        self.k = [k[index] for k in self.k]
        self.v = [v[index] for v in self.v]
