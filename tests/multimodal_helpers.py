"""Test helpers for the multimodal tests: a byte-level tokenizer with the interface ``Processor`` expects.

The real tokenizers (tokenizer.py) provide the same three methods; this stand-in keeps the processor tests
independent of them: ids 0..255 are bytes, special tokens are numbered after them and never come from text."""

from __future__ import annotations


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
