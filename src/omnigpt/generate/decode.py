"""Text generation: sampling filters as pure functions, and KV-cache decoding as an iterator of tokens.

Layers, bottom up:

* **Filters** (``apply_repetition_penalty``, ``apply_temperature``, ``top_k_filter``, ``top_p_filter``) map logits
  (B, V) to logits (B, V), with ``-inf`` for removed tokens; ``sample_next`` chains them in ``transformers``'
  order (repetition penalty → temperature → top-k → top-p) and draws one token per row. Temperature 0 is greedy.
* **``generate``** prefills the prompt into a preallocated per-layer KV cache (``make_kv_cache``) and then feeds
  one token per step. It returns a ``Generation``: an iterator of ``GenerationStep`` (the new token of each
  sequence, which have finished and why). Prompts of different lengths are left-padded, with position ids
  computed from the attention mask; each sequence stops on its own (stop token or ``max_new_tokens``) and
  finished rows are dropped from the batch, so the rest run at the smaller batch size. ``close()`` (or just
  dropping the iterator) cancels; ``stop(i)`` ends one sequence early (the server's per-client cancel, stop strings).
* **Text** lives in ``omnigpt.generate.text`` (``TextStream``, ``stream_text``, ``generate_text``): incremental
  detokenisation and stop strings on top of this iterator.

Speed (batch-1 decoding is memory-bound: every step reads every weight once): logits only for the last position,
no masks when nothing is padded, one host sync per step; at batch 1 every matrix–vector product (the blocks' and the
LM head's) goes through ``omnigpt.kernels.matvec``'s per-shape plan, which reads nn.Linear's (out, in) fp32 weights on
both cores (~2× MKL's one-core gemv here; bit-identical results, so greedy tokens do not change) — ``generate`` swaps
``kernels.matmul.Linear`` in for the model's ``nn.Linear``s (module replacement by class; idempotent, the weights and
state dict untouched) and every step is a plain ``model(...)`` call;
``omnigpt.kernels.quantize`` reads 4× (int8) or ~7× (int4) fewer weight bytes. ``compile=True`` removes most of what is
left between the products: the decode step runs as one ``torch.compile`` graph over a static cache
(``omnigpt.generate.fast``; opt-in, it costs ~40 s of compilation once per process and model). ``benchmarks/
decode.py`` and ``benchmarks/decode_smollm2.py`` measure all of it against ``transformers``.

Context overflow: the model has ``block_size`` learned positions. ``context_overflow="error"`` (default) raises
``ContextOverflowError`` naming the limit before any work is done; ``"slide"`` keeps the most recent 3/4 of the
context whenever it fills up and re-encodes it at positions 0.. (never positions past the table).

References: litgpt ``generate/base.py`` (filters, iterator), nanochat ``engine.py`` (KV-cache engine, per-row
completion), HF ``LogitsProcessor`` classes (semantics we match), TGI's incremental detokenisation.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from omnigpt.generate.fast import DecodeSession, supports
from omnigpt.kernels.matmul import use_planned_linears
from omnigpt.kernels.matvec import DEFAULT as MATVEC
from omnigpt.kernels.matvec import MatvecPlanner, planned_decode
from omnigpt.models.gpt import GPT
from omnigpt.models.kv_cache import KVCache, make_kv_cache

# ------------------------------------------------------------------------------------------------------------
# Sampling filters: pure functions, logits (B, V) in, logits (B, V) out; removed tokens get -inf.


def apply_repetition_penalty(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019; HF ``RepetitionPenaltyLogitsProcessor``): for each token
    already in the sequence (``seen`` (B, V) bool), divide a positive logit by ``penalty``, multiply a negative one."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """logits / T: T < 1 sharpens the distribution, T > 1 flattens it. T = 0 means greedy and is handled by the
    caller (``sample_next``), never by dividing by zero."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 here (0 means greedy), got {temperature}")
    return logits if temperature == 1.0 else logits / temperature


def top_k_filter(logits: Tensor, k: int | None) -> Tensor:
    """Keep the k largest logits of each row (ties with the k-th are kept, as in HF), -inf elsewhere."""
    if k is None or k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1): the k-th largest logit
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, p: float | None) -> Tensor:
    """Nucleus sampling (Holtzman et al. 2019): keep the smallest set of most probable tokens whose probability
    adds up to at least ``p`` (always at least the most probable one), -inf elsewhere."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits.float(), dim=-1)
    mass_before = probs.cumsum(-1) - probs  # probability of the tokens strictly more likely than this one
    drop_sorted = mass_before >= p  # once p is reached, every later token is dropped (the first never is)
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def sample_next(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                repetition_penalty: float = 1.0, seen: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """One token per row from logits (B, V): filters in HF's order, then argmax (temperature 0) or a draw."""
    logits = logits.float()
    if repetition_penalty != 1.0 and seen is not None:
        logits = apply_repetition_penalty(logits, seen, repetition_penalty)
    if temperature == 0:
        return logits.argmax(dim=-1)  # (B,) greedy; top-k / top-p cannot change the argmax
    logits = top_p_filter(top_k_filter(apply_temperature(logits, temperature), top_k), top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


# ------------------------------------------------------------------------------------------------------------
# Token-level generation


class ContextOverflowError(ValueError):
    """The prompt plus the tokens asked for do not fit in the model's context (``block_size``)."""


@dataclass(frozen=True)
class GenerationStep:
    """What one decoding step produced, one entry per sequence of the batch (in the caller's order).

    ``tokens[i]`` is sequence i's new token, or None when it had already finished before this step. A stop token
    is reported (as ``transformers`` includes EOS in its output) with ``finish_reasons[i] == "stop"``; the text
    helpers drop it. ``finish_reasons[i]`` is None while sequence i runs, then "stop" (a stop token or
    ``stop(i)``), "length" (``max_new_tokens``) or "cancelled" (the ``cancel`` event)."""

    tokens: list[int | None]
    finished: list[bool]
    finish_reasons: list[str | None]


class Generation:
    """Iterator of ``GenerationStep``; also ``close()`` to cancel everything and ``stop(i)`` to end sequence i.

    Use as ``for step in generate(...)`` or ``with generate(...) as gen:``; closing frees the KV cache."""

    def __init__(self, steps: Iterator[GenerationStep], state: _State, prompt_lengths: list[int]) -> None:
        self._steps = steps
        self._state = state
        self.prompt_lengths = prompt_lengths  # real (unpadded) prompt length of each sequence, in tokens

    def __iter__(self) -> Generation:
        return self

    def __next__(self) -> GenerationStep:
        return next(self._steps)

    def stop(self, index: int) -> None:
        """End sequence ``index`` (finish reason "stop") before the next step; its row leaves the batch."""
        self._state.stop_requests.add(index)

    @property
    def compile_seconds(self) -> float:
        """Seconds this generation spent compiling the decode step (``compile=...``; 0 when already compiled)."""
        return self._state.compile_seconds

    def close(self) -> None:
        self._steps.close()  # type: ignore[attr-defined]  # ends the generator; its cache is freed with it

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class _State:
    stop_requests: set[int]
    compile_seconds: float = 0.0


def _as_batch(input_ids: Sequence[Sequence[int]] | Tensor | None, inputs_embeds: Tensor | None,
              attention_mask: Tensor | None, device: torch.device) -> tuple[Tensor | None, Tensor | None, Tensor]:
    """Normalise the prompt to left-padded ids (B, P) (pad = 0), embeddings (B, P, C) and mask (B, P) of 0/1."""
    if inputs_embeds is not None:
        B, P = inputs_embeds.shape[:2]
        ids = None if input_ids is None else torch.as_tensor(input_ids, dtype=torch.long).reshape(B, P)
    elif isinstance(input_ids, Tensor):
        if input_ids.dim() not in (1, 2) or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer tensor of shape (T,) or (B, T), got {input_ids.dtype} "
                             f"{tuple(input_ids.shape)}")
        ids = input_ids if input_ids.dim() == 2 else input_ids[None]
        B, P = ids.shape
        if P == 0:
            raise ValueError("every prompt needs at least one token")
    else:
        if input_ids is None or len(input_ids) == 0:
            raise ValueError("pass input_ids (a non-empty batch of token id lists) or inputs_embeds")
        rows = [list(r) for r in input_ids]
        if any(len(r) == 0 for r in rows):
            raise ValueError("every prompt needs at least one token")
        P = max(len(r) for r in rows)
        ids = torch.tensor([[0] * (P - len(r)) + r for r in rows], dtype=torch.long)  # left padding
        mask = torch.tensor([[0] * (P - len(r)) + [1] * len(r) for r in rows], dtype=torch.long)
        return ids.to(device), None, mask.to(device)
    if attention_mask is None:
        mask = torch.ones(B, P, dtype=torch.long)
    else:
        mask = attention_mask.to(torch.long).cpu()
        if tuple(mask.shape) != (B, P):
            raise ValueError(f"attention_mask must have the prompt's shape {(B, P)}, got {tuple(mask.shape)}")
        if bool((mask.sum(-1) == 0).any()):
            raise ValueError("every prompt needs at least one token (a row of attention_mask is all 0)")
        # Any padding side → left padding: a stable sort puts the pads (0) first and keeps the tokens' order.
        order = torch.argsort(mask, dim=1, stable=True)  # (B, P)
        mask = mask.gather(1, order)
        if ids is not None:
            ids = ids.cpu().gather(1, order)
        if inputs_embeds is not None:
            inputs_embeds = inputs_embeds.gather(1, order.to(inputs_embeds.device)[..., None].expand_as(inputs_embeds))
    if ids is not None:
        ids = ids.to(device=device, dtype=torch.long)
    return ids, inputs_embeds, mask.to(device)


def generate(model: GPT, input_ids: Sequence[Sequence[int]] | Tensor | None = None, *, max_new_tokens: int,
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             repetition_penalty: float = 1.0, stop_token_ids: Sequence[int] = (), seed: int | None = None,
             attention_mask: Tensor | None = None, inputs_embeds: Tensor | None = None,
             context_overflow: Literal["error", "slide"] = "error",
             cancel: threading.Event | None = None, compile: bool | str = False) -> Generation:
    """Decode up to ``max_new_tokens`` tokens per sequence; returns an iterator of ``GenerationStep``.

    ``input_ids``: a batch of token-id lists of any lengths (left-padded here), or a (B, T) / (T,) tensor with an
    optional ``attention_mask`` (1 = real token, either padding side). ``inputs_embeds`` (B, T, C) replaces the
    ids for multimodal prompts (``input_ids`` may then still be given, for the repetition penalty).
    ``temperature=0`` is greedy; ``seed`` makes sampling reproducible (a private ``torch.Generator``; without it
    the global RNG is used). ``stop_token_ids`` end a sequence when produced. ``cancel``: an event another thread
    may set; the iterator then ends before the next step. Arguments are checked here, before any computation;
    the prompt is encoded on the first ``next()``. Call ``model.eval()`` first (dropout is not switched off).

    ``compile=True`` (or a ``torch.compile`` mode name, e.g. "max-autotune-no-cudagraphs") decodes unpadded token
    prompts through the decode step compiled as one graph (``omnigpt.generate.fast``): ~40 s once per process and
    model (~15 s from inductor's on-disk cache), then ~1.3× faster steps; where compiling fails it warns and decodes
    eagerly. Padded batches, ``inputs_embeds`` prompts and models with their own forward keep the generic path."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 or None = off), got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1 = off), got {repetition_penalty}")
    if not isinstance(compile, bool | str):
        raise ValueError(f"compile must be a bool or a torch.compile mode name, got {compile!r}")
    if context_overflow not in ("error", "slide"):
        raise ValueError(f"context_overflow must be 'error' or 'slide', got {context_overflow!r}")
    cfg = model.config
    device = model.lm_head.weight.device
    use_planned_linears(model)  # one-row products through the matvec plan inside _last_logits (kernels.matvec)
    ids, embeds, mask = _as_batch(input_ids, inputs_embeds, attention_mask, device)
    if ids is not None and ids.numel():
        lo, hi = int(ids.min()), int(ids.max())
        if lo < 0 or hi >= cfg.vocab_size:
            raise ValueError(f"token id {lo if lo < 0 else hi} is out of range for vocab_size {cfg.vocab_size}")
    bad_stop = [t for t in stop_token_ids if not 0 <= t < cfg.vocab_size]
    if bad_stop:
        raise ValueError(f"stop token ids {bad_stop} are out of range for vocab_size {cfg.vocab_size}")
    P = mask.shape[1]
    if context_overflow == "error" and P + max_new_tokens > cfg.block_size:
        raise ContextOverflowError(
            f"prompt ({P} tokens) + max_new_tokens ({max_new_tokens}) = {P + max_new_tokens} tokens exceeds the "
            f"model's context length block_size={cfg.block_size}; shorten the prompt, lower max_new_tokens, or "
            f"pass context_overflow='slide'")
    lengths = mask.sum(-1).tolist()
    state = _State(stop_requests=set())
    opts = dict(temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
    steps = _decode(model, ids, embeds, mask, max_new_tokens, opts, frozenset(stop_token_ids), seed, cancel, state,
                    compile)
    return Generation(steps, state, [int(n) for n in lengths])


def _positions(mask: Tensor) -> Tensor:
    """Position ids (B, T) from a left-padded mask: 0, 1, 2… over the real tokens (pads get 0, unused)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def _last_logits(model: GPT, input_ids: Tensor | None = None, *, inputs_embeds: Tensor | None = None,
                 attention_mask: Tensor | None, position_ids: Tensor | None, past_key_values: list[KVCache],
                 planner: MatvecPlanner = MATVEC) -> Tensor:
    """The logits of each row's last position (b, V): ``model(..., logits_to_keep=1).logits[:, -1]``, with the
    one-row products (batch 1) of the linears ``generate`` swapped in (``kernels.matmul.use_planned_linears``)
    going through the decode matvec plan — bit-identical, ~2× faster on CPU (``omnigpt.kernels.matvec``)."""
    with planned_decode(planner):
        return model(input_ids, attention_mask=attention_mask, position_ids=position_ids, inputs_embeds=inputs_embeds,
                     past_key_values=past_key_values, logits_to_keep=1).logits[:, -1]


class _Batch:
    """The rows still generating: token and mask buffers (b, W) mirroring the KV cache's columns, the cache, the
    next position of each row and, for the repetition penalty, the tokens each row has seen (b, V).

    Rows are right-aligned (left padding) and all advance together, so column n is every row's next slot.

    With ``compile``, unpadded token prompts of a plain ``GPT`` run through a ``DecodeSession`` (static cache, the
    decode step compiled as one graph) instead of ``_last_logits`` over ``KVCache``s. Without it they stay here:
    the session's eager step is no faster (the same kernels; what compiling removes is the overhead between them)."""

    def __init__(self, model: GPT, ids: Tensor | None, embeds: Tensor | None, mask: Tensor, width: int,
                 track_seen: bool, compile: bool | str = False) -> None:
        self.model, self.width, self.compile = model, width, compile
        self.session: DecodeSession | None = None
        B, P = mask.shape
        self.rows = list(range(B))  # rows[j] = the caller's index of active row j
        self.ids = torch.zeros(B, width, dtype=torch.long, device=mask.device)  # (b, W) tokens in the cache
        self.mask = torch.zeros(B, width, dtype=torch.long, device=mask.device)  # (b, W) 1 = real token
        if ids is not None:
            self.ids[:, :P] = ids
        self.mask[:, :P] = mask
        self.n = P  # columns filled
        self.prompt_embeds = embeds  # (b, P, C), kept to re-encode a slid window that still holds prompt columns
        self.dropped = 0  # columns slid out so far: prompt column c now sits at c - dropped
        self.seen: Tensor | None = None
        if track_seen:
            self.seen = torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=mask.device)
            if ids is not None:
                real = mask.bool()
                self.seen[torch.arange(B, device=mask.device)[:, None].expand(B, P)[real], ids[real]] = True
        self.caches: list[KVCache] = []
        self.next_pos = self.padded = None

    def encode(self) -> Tensor:
        """Fresh caches; encode columns [0, n) in one forward; return the last column's logits (b, V)."""
        n, m = self.n, self.mask[:, : self.n]
        self.padded = bool((m == 0).any())  # no padding → no mask to pass (the model's faster path)
        self.next_pos = m.sum(-1, keepdim=True)  # (b, 1) position of each row's next token
        embedded = self.prompt_embeds is not None and self.dropped < self.prompt_embeds.shape[1]
        if self.compile is not False and not self.padded and not embedded and supports(self.model):
            if self.session is None:
                self.session = DecodeSession(self.model, len(self.rows), self.width, compile=self.compile)
            return self.session.prefill(self.ids[:, :n])
        self.session = None
        self.caches = make_kv_cache(self.model.config, self.width)
        x: dict[str, Tensor | None] = {"input_ids": self.ids[:, :n], "inputs_embeds": None}
        if self.prompt_embeds is not None and self.dropped < self.prompt_embeds.shape[1]:
            # Columns still inside the prompt come from its embeddings, later ones from the token embedding.
            tok_emb = self.model.transformer.wte(self.ids[:, :n])  # (b, n, C)
            p = min(self.prompt_embeds.shape[1] - self.dropped, n)
            prompt = self.prompt_embeds[:, self.dropped : self.dropped + p].to(tok_emb.dtype)
            x = {"input_ids": None, "inputs_embeds": torch.cat([prompt, tok_emb[:, p:]], dim=1)}
        return _last_logits(self.model, **x, attention_mask=m if self.padded else None,
                            position_ids=_positions(m) if self.padded else None, past_key_values=self.caches)

    def append(self, tok: Tensor, keep: int) -> Tensor:
        """Feed each row's new token (b,); return the next logits (b, V). When the buffers are full (only with
        context_overflow="slide"), the last ``keep`` columns move to the front and are re-encoded at 0.."""
        if self.seen is not None:
            self.seen[torch.arange(len(self.rows), device=tok.device), tok] = True
        slide = self.n == self.width
        if slide:
            n = self.n
            self.ids[:, :keep] = self.ids[:, n - keep : n].clone()
            self.mask[:, :keep] = self.mask[:, n - keep : n].clone()
            self.dropped += n - keep
            self.n = keep
        self.ids[:, self.n], self.mask[:, self.n] = tok, 1
        self.n += 1
        if slide:  # positions changed: rebuild the cache from the window
            return self.encode()
        if self.session is not None:
            logits = self.session.step(tok)
            self.next_pos = self.next_pos + 1
            return logits
        logits = _last_logits(self.model, tok[:, None], attention_mask=self.mask[:, : self.n] if self.padded else None,
                              position_ids=self.next_pos, past_key_values=self.caches)
        self.next_pos = self.next_pos + 1
        return logits

    def keep_rows(self, alive: list[int]) -> None:
        """Keep only active rows ``alive`` (indices into ``rows``): finished rows leave the batch."""
        index = torch.tensor(alive, device=self.ids.device)
        self.rows = [self.rows[j] for j in alive]
        self.ids, self.mask, self.next_pos = self.ids[index], self.mask[index], self.next_pos[index]
        if self.seen is not None:
            self.seen = self.seen[index]
        if self.prompt_embeds is not None:
            self.prompt_embeds = self.prompt_embeds[index]
        for c in self.caches:
            c.reorder(index)
        if self.session is not None:
            self.session.keep_rows(index)
        self.padded = bool((self.mask[:, : self.n] == 0).any())


def _decode(model: GPT, ids: Tensor | None, embeds: Tensor | None, mask: Tensor, max_new_tokens: int,
            opts: dict[str, Any], stop_ids: frozenset[int], seed: int | None,
            cancel: threading.Event | None, state: _State, compile: bool | str = False) -> Iterator[GenerationStep]:
    """The decoding loop behind ``generate``. Per step: one (b, 1) forward over the preallocated cache, one sampled
    token per active row, one host sync (``tolist``) to report them."""
    if max_new_tokens == 0:
        return
    B, P = mask.shape
    block = model.config.block_size
    keep = max(1, block * 3 // 4)  # after a slide, this many most recent positions stay in the context
    if block < P:  # (only with "slide"; "error" was raised before) keep the end of the prompt
        ids = None if ids is None else ids[:, -keep:]
        embeds = None if embeds is None else embeds[:, -keep:]
        mask, P = mask[:, -keep:], keep
    finished = [False] * B
    reasons: list[str | None] = [None] * B
    generator = None
    if seed is not None:
        generator = torch.Generator(device=mask.device)
        generator.manual_seed(seed)
    with torch.inference_mode():
        batch = _Batch(model, ids, embeds, mask, min(block, P + max_new_tokens), opts["repetition_penalty"] != 1.0,
                       compile)
        logits = batch.encode()
    for step in range(max_new_tokens):
        if cancel is not None and cancel.is_set():  # the caller gave up: end everything now
            for r in batch.rows:
                finished[r], reasons[r] = True, "cancelled"
            return
        stopped = [j for j, r in enumerate(batch.rows) if r in state.stop_requests]  # stop(i) since the last step
        for j in stopped:
            finished[batch.rows[j]], reasons[batch.rows[j]] = True, "stop"
        if stopped:
            alive = [j for j in range(len(batch.rows)) if j not in stopped]
            if not alive:
                return
            batch.keep_rows(alive)
            logits = logits[alive]
        with torch.inference_mode():
            tok = sample_next(logits, seen=batch.seen, generator=generator, **opts)  # (b,)
        new = tok.tolist()  # the one host sync per step
        tokens: list[int | None] = [None] * B
        alive = []
        for j, (r, t) in enumerate(zip(batch.rows, new, strict=True)):
            tokens[r] = t
            if t in stop_ids or step == max_new_tokens - 1:
                finished[r], reasons[r] = True, "stop" if t in stop_ids else "length"
            else:
                alive.append(j)
        yield GenerationStep(tokens, list(finished), list(reasons))
        if not alive:
            return
        with torch.inference_mode():
            if len(alive) < len(batch.rows):  # finished rows leave: the rest run at the smaller batch size
                batch.keep_rows(alive)
                tok = tok[alive]
            logits = batch.append(tok, keep)
            if batch.session is not None:
                state.compile_seconds += batch.session.compile_seconds
                batch.session.compile_seconds = 0.0


@torch.no_grad()
def greedy_ids(model: GPT, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
               stop_token_ids: Sequence[int] = (), batch_size: int = 16) -> list[list[int]]:
    """Greedy continuations of many prompts, ``batch_size`` at a time, stop tokens left out. Each batch's budget is
    cut to what its longest prompt leaves of the context, so a long prompt never raises."""
    stops, out = set(stop_token_ids), []
    for i in range(0, len(prompts), batch_size):
        chunk = [list(p) for p in prompts[i : i + batch_size]]
        budget = max(0, min(max_new_tokens, model.config.block_size - max(map(len, chunk))))
        got: list[list[int]] = [[] for _ in chunk]
        with generate(model, chunk, max_new_tokens=budget, temperature=0.0, stop_token_ids=list(stops)) as gen:
            for step in gen:
                for j, t in enumerate(step.tokens):
                    if t is not None and t not in stops:
                        got[j].append(t)
        out += got
    return out
