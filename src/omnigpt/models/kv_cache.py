"""KV caches: the keys and values of the positions already seen, so decoding a token costs O(1) new projections.

The model knows a cache only by what its attention calls (``models.gpt.Cache``): ``pos``, the positions cached so
far, and ``update(k, v)``, which stores the new keys and values (B, nkv, T, hs) and returns every visible key and
value (B, nkv, S, hs) with their absolute positions (S,) — position -1 marks an empty slot, which the attention
mask hides. Two caches keep that contract:

* ``KVCache`` (``make_kv_cache``: one per layer): preallocated, grows with each call. Dense layers keep every
  position; GPT-3's banded layers keep only a ring of ``local_window`` slots, since a key older than the window
  can never be attended again. ``generate``, the HF facade and the models' own sampling loops use it.
* ``StaticKVCache``: one layer's window on buffers owned by the caller (``generate.fast.DecodeSession``), written
  in place at a position the caller gives — the form ``torch.compile`` turns into one graph with the decode step.

This file sits in ``models/`` rather than ``generate/`` because models below ``generate`` decode with it too
(``igpt.sample``, ``pix2seq.detect``, Whisper's ``DecoderState``); ``models/gpt.py`` itself never imports it.
Reference: gpt-fast ``model.py`` (``KVCache.update`` with ``index_copy_``), nanochat ``engine.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from omnigpt.config import GPTConfig


class KVCache:
    """Preallocated keys and values of one layer.

    Dense layers keep ``max_len`` slots (B, nkv, max_len, hs) — nkv = n_head, or fewer KV heads under grouped-query
    attention (SmolLM2: 3 instead of 9, a third of the memory). Banded layers (GPT-3's local attention) keep a ring
    of ``window`` slots. Storage is allocated on the first update, in the dtype the projections produce (bf16 under
    autocast)."""

    def __init__(self, max_len: int, window: int | None = None) -> None:
        self.capacity = max_len if window is None else min(window, max_len)
        self.window = window
        self.max_len = max_len
        self.pos = 0  # absolute positions written so far
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        # (capacity,) absolute position held by each slot: -1 while empty in a ring; slot i is position i when dense.
        self.slot_pos: Tensor | None = None

    def _allocate(self, k: Tensor) -> None:
        B, nh, _, hs = k.shape
        self.k = k.new_zeros(B, nh, self.capacity, hs)
        self.v = k.new_zeros(B, nh, self.capacity, hs)
        if self.window is None:  # dense: made once, so a decode step slices it instead of calling arange
            self.slot_pos = torch.arange(self.capacity, device=k.device)
        else:
            self.slot_pos = torch.full((self.capacity,), -1, dtype=torch.long, device=k.device)

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append k, v (B, nkv, T, hs); return all visible keys, values (B, nkv, S, hs) and their positions (S,)."""
        T = k.shape[2]
        if self.pos + T > self.max_len:
            raise ValueError(f"KV cache overflow: {self.pos} cached + {T} new positions > max_len {self.max_len}")
        if self.k is None:
            self._allocate(k)
        assert self.k is not None and self.v is not None and self.slot_pos is not None
        if self.window is None:
            self.k[:, :, self.pos : self.pos + T] = k
            self.v[:, :, self.pos : self.pos + T] = v
            self.pos += T
            return self.k[:, :, : self.pos], self.v[:, :, : self.pos], self.slot_pos[: self.pos]
        # Ring buffer: attend over (old ring ∪ new keys), then keep only the newest `capacity` in the ring.
        new_pos = torch.arange(self.pos, self.pos + T, device=k.device)
        k_all = torch.cat([self.k, k], dim=2)
        v_all = torch.cat([self.v, v], dim=2)
        pos_all = torch.cat([self.slot_pos, new_pos])
        keep = min(T, self.capacity)
        slots = new_pos[-keep:] % self.capacity
        self.k[:, :, slots] = k[:, :, -keep:]
        self.v[:, :, slots] = v[:, :, -keep:]
        self.slot_pos[slots] = new_pos[-keep:]
        self.pos += T
        return k_all, v_all, pos_all

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (e.g. drop finished sequences)."""
        if self.k is not None and self.v is not None:
            self.k, self.v = self.k[index], self.v[index]


def make_kv_cache(config: GPTConfig, max_len: int | None = None) -> list[KVCache]:
    """One cache per layer, sized for ``max_len`` positions (default: the whole context)."""
    max_len = max_len or config.block_size
    return [KVCache(max_len, config.layer_window(i)) for i in range(config.n_layer)]


class StaticKVCache:
    """One layer's window on caller-owned buffers k, v (B, nkv, L, hs) for one forward starting at ``pos``: writes
    the new keys/values at [pos, pos + T) in place and returns slots [0, pos + T) as views. Every layer keeps every
    slot (banded layers mask the old ones), so one buffer shape serves all layers."""

    def __init__(self, k: Tensor, v: Tensor, pos: int) -> None:
        self.k, self.v, self.pos = k, v, pos

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        end = self.pos + k.shape[2]
        slots = torch.arange(self.pos, end, device=k.device)  # (T,)
        self.k.index_copy_(2, slots, k)  # in place, also in a compiled graph (inductor re-inplaces it)
        self.v.index_copy_(2, slots, v)
        # The visible slots' positions (S,) are only read when attention needs a mask (prompts, banded layers).
        return self.k[:, :, :end], self.v[:, :, :end], torch.arange(end, device=k.device)


__all__ = ["KVCache", "StaticKVCache", "make_kv_cache"]
