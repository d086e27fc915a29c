"""Text on top of ``omnigpt.generate.decode``: incremental detokenisation and stop strings, and one-call helpers.

``TextStream`` turns the token iterator into text deltas that never contain half a UTF-8 character and never
emit any part of a stop string; ``stream_texts`` / ``stream_text`` / ``generate_text`` encode prompts, run
``generate`` and stream or collect the text. The CLI, the demo and the server use these.
Reference: TGI's incremental detokenisation (decode a window of tokens, emit only the stable suffix).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from omnigpt.generate.decode import generate
from omnigpt.models.gpt import GPT


class TextTokenizer(Protocol):
    """What the text helpers need from a tokenizer (omnigpt's, or any with the same three members)."""

    eos_token_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class TextStream:
    """Turns one sequence's tokens into text deltas as they arrive.

    Byte-level BPE splits a multi-byte UTF-8 character across tokens, and decoding a partial one gives U+FFFD; so
    text is only emitted once it no longer ends in U+FFFD (TGI's prefix/read offsets keep each decode short).
    Text that could be the start of a stop string is held back until it is known not to be one; when a stop
    string appears, the text before it is emitted and ``stopped`` becomes True (the stop string is not emitted)."""

    def __init__(self, tokenizer: TextTokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.prefix_offset = 0  # ids[prefix_offset:read_offset] were decoded last time (context for the next)
        self.read_offset = 0
        self.pending = ""  # decoded, not yet emitted: could be the beginning of a stop string
        self.text = ""  # everything emitted so far
        self.stopped = False

    def push(self, token_id: int) -> str:
        """Add one token; return the text that is now safe to show ("" if none)."""
        if self.stopped:
            return ""
        self.ids.append(token_id)
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.tokenizer.decode(self.ids[self.prefix_offset :])
        if len(full) <= len(prefix) or full.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 character: wait for the next token
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return self._emit(full[len(prefix) :])

    def flush(self) -> str:
        """The sequence ended: emit what was held back (an incomplete character decodes as U+FFFD)."""
        if self.stopped:
            return ""
        prefix = self.tokenizer.decode(self.ids[self.prefix_offset : self.read_offset])
        rest = self.tokenizer.decode(self.ids[self.prefix_offset :])[len(prefix) :]
        self.prefix_offset = self.read_offset = len(self.ids)
        out = self._emit(rest)
        if not self.stopped:  # nothing more is coming, so a held-back tail is plain text after all
            out, self.text, self.pending = out + self.pending, self.text + self.pending, ""
        return out

    def _emit(self, delta: str) -> str:
        self.pending += delta
        hits = [i for i in (self.pending.find(s) for s in self.stop) if i >= 0]
        if hits:  # a stop string: emit up to it and stop
            out, self.pending, self.stopped = self.pending[: min(hits)], "", True
        else:  # hold back the longest tail that is the beginning of some stop string
            hold = max((k for s in self.stop for k in range(1, min(len(s), len(self.pending) + 1))
                        if self.pending.endswith(s[:k])), default=0)
            cut = len(self.pending) - hold
            out, self.pending = self.pending[:cut], self.pending[cut:]
        self.text += out
        return out


@dataclass(frozen=True)
class TextStep:
    """One step of ``stream_texts``: the text each prompt gained ("" if none) and which have finished, and why
    ("stop": a stop token or stop string; "length": ``max_new_tokens``)."""

    deltas: list[str]
    finished: list[bool]
    finish_reasons: list[str | None]


def stream_texts(model: GPT, tokenizer: TextTokenizer, prompts: Sequence[str], *, stop: Sequence[str] = (),
                 stop_token_ids: Sequence[int] | None = None, **controls: Any) -> Iterator[TextStep]:
    """Generate for a batch of prompts, yielding text deltas per step. ``stop_token_ids`` defaults to the
    tokenizer's EOS; ``controls`` are ``generate``'s keywords (``max_new_tokens`` is required). A sequence that
    hits a stop string leaves the batch at once. Closing this iterator cancels the generation."""
    if stop_token_ids is None:
        eos = getattr(tokenizer, "eos_token_id", None)
        stop_token_ids = () if eos is None else (eos,)
    stop_set = set(stop_token_ids)
    streams = [TextStream(tokenizer, stop) for _ in prompts]
    reported = [False] * len(prompts)  # finished already reported in an earlier step
    with generate(model, [tokenizer.encode(p) for p in prompts], stop_token_ids=stop_token_ids,
                  **controls) as gen:
        for step in gen:
            deltas, finished, reasons = [""] * len(prompts), list(step.finished), list(step.finish_reasons)
            for i, (t, s) in enumerate(zip(step.tokens, streams, strict=True)):
                if reported[i]:
                    continue
                if t is not None and t not in stop_set:
                    deltas[i] = s.push(t)
                if s.stopped and not finished[i]:
                    gen.stop(i)  # a stop string: end this sequence before the next step
                    finished[i], reasons[i] = True, "stop"
                if finished[i]:
                    deltas[i] += s.flush()
                    reported[i] = True
            yield TextStep(deltas, finished, reasons)
            if all(reported):
                return


def stream_text(model: GPT, tokenizer: TextTokenizer, prompt: str, *, stop: Sequence[str] = (),
                **controls: Any) -> Iterator[str]:
    """Generate from one prompt, yielding non-empty text deltas until EOS, a stop string or ``max_new_tokens``."""
    for step in stream_texts(model, tokenizer, [prompt], stop=stop, **controls):
        if step.deltas[0]:
            yield step.deltas[0]


def generate_text(model: GPT, tokenizer: TextTokenizer, prompts: str | Sequence[str], *, stop: Sequence[str] = (),
                  **controls: Any) -> str | list[str]:
    """The completed text of one prompt (a str) or of a batch (a list), stop strings excluded."""
    batch = [prompts] if isinstance(prompts, str) else list(prompts)
    texts = [""] * len(batch)
    for step in stream_texts(model, tokenizer, batch, stop=stop, **controls):
        texts = [t + d for t, d in zip(texts, step.deltas, strict=True)]
    return texts[0] if isinstance(prompts, str) else texts
