"""Tokenizers: a character-level one (nanoGPT's Shakespeare char model) and byte-level BPE (GPT-2).

* ``Tokenizer`` is the small interface the trainer, generator and server use: ``encode``/``decode``, the
  vocabulary size, special tokens (``<|endoftext|>``, later ``<|image|>``, ``<|audio|>``), ``save`` and
  ``load_tokenizer`` which detects the kind from the files in a directory.
* ``CharTokenizer``: one id per character seen in a training text (Karpathy's ``char-rnn``/nanoGPT recipe).
* ``BPETokenizer``: byte-level BPE (Sennrich et al. 2016; Radford et al. 2019 §2.2) on the HF ``tokenizers``
  Rust backend. It trains on text files, saves ``tokenizer.json`` and GPT-2's ``vocab.json`` + ``merges.txt``,
  and ``gpt2_tokenizer()`` is OpenAI's exact GPT-2 vocabulary, rebuilt offline from ``gpt2.tiktoken`` (shipped in
  the ``openai-whisper`` sdist; ``gpt2_vocab.py`` recovers the merges from the ranks), so ids equal ``tiktoken``'s.
  Deliberate deviation, for speed: encoding splits text with GPT-2's regex in the ``regex`` module (the backend's
  Oniguruma split is ~4x slower) and caches each piece's ids, running the backend's BPE only on new pieces.

Special tokens are never produced from user text by accident: ``encode("<|endoftext|>")`` encodes the 13
characters as text (tiktoken's ``encode_ordinary``) unless ``allowed_special`` names it (or is True). The
``transformers``-shaped facade in ``hf.py`` follows ``transformers`` instead and parses them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import ClassVar

import regex
import tokenizers
import tokenizers.decoders
import tokenizers.models
import tokenizers.pre_tokenizers
import tokenizers.processors
import tokenizers.trainers

from omnigpt.files.atomic import read_json_object

EOT = "<|endoftext|>"
CHAR_FILE = "char_tokenizer.json"  # CharTokenizer's own format
HF_FILE = "tokenizer.json"  # HF tokenizers' format (the whole pipeline)
VOCAB_FILE, MERGES_FILE = "vocab.json", "merges.txt"  # GPT-2's original format
CONFIG_FILE = "tokenizer_config.json"  # transformers' tokenizer settings (special tokens, class)


class TokenizerError(ValueError):
    """A tokenizer file is missing, malformed or of the wrong kind; the message names the file and key."""


class Tokenizer:
    """Base interface. Subclasses fill ``_special`` (token → id) and implement the abstract methods."""

    kind: ClassVar[str] = "base"
    eos_token: str = EOT  # the special token that ends a sequence (tokenizer_config.json's eos_token when saved)

    def __init__(self) -> None:
        self._special: dict[str, int] = {}

    # -- vocabulary --------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def special_tokens(self) -> dict[str, int]:
        """Registered special tokens (a copy): string → id."""
        return dict(self._special)

    @property
    def eos_token_id(self) -> int | None:
        """Id of ``eos_token`` (``<|endoftext|>``, the document separator, unless the files say otherwise)."""
        return self._special.get(self.eos_token)

    def token_to_id(self, token: str) -> int:
        """Id of one vocabulary entry (a special token or a raw vocabulary string); KeyError when unknown."""
        raise NotImplementedError

    def id_to_token(self, idx: int) -> str:
        raise NotImplementedError

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Register special tokens (new ones get the next free ids); return the ids of all ``tokens``."""
        raise NotImplementedError

    # -- encoding ----------------------------------------------------------------------------------------------
    def _allowed(self, allowed_special: bool | set[str] | frozenset[str]) -> set[str]:
        if allowed_special is True:
            return set(self._special)
        if not allowed_special:
            return set()
        unknown = set(allowed_special) - set(self._special)
        if unknown:
            raise ValueError(f"allowed_special names unregistered special tokens {sorted(unknown)}")
        return set(allowed_special)

    def _split_special(self, text: str, allowed: set[str]) -> list[str | int]:
        """Cut ``text`` at occurrences of the allowed special tokens: text pieces stay str, specials become ids."""
        if not allowed:
            return [text]
        pattern = re.compile("(" + "|".join(re.escape(t) for t in sorted(allowed, key=len, reverse=True)) + ")")
        parts: list[str | int] = []
        for i, piece in enumerate(pattern.split(text)):
            if i % 2:  # odd pieces are the separators the capture group kept
                parts.append(self._special[piece])
            elif piece:
                parts.append(piece)
        return parts

    def _encode_ordinary(self, text: str) -> list[int]:
        raise NotImplementedError

    def _encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        return [self._encode_ordinary(t) for t in texts]

    def encode(self, text: str, allowed_special: bool | set[str] | frozenset[str] = False) -> list[int]:
        """Token ids of ``text``. Special-token strings in ``text`` are plain text unless ``allowed_special``."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects str, got {type(text).__name__}")
        parts = self._split_special(text, self._allowed(allowed_special))
        texts = [p for p in parts if isinstance(p, str)]
        encoded = iter(self._encode_ordinary_batch(texts))
        ids: list[int] = []
        for p in parts:
            if isinstance(p, int):
                ids.append(p)
            else:
                ids.extend(next(encoded))
        return ids

    def encode_batch(self, texts: Sequence[str], allowed_special: bool | set[str] = False) -> list[list[int]]:
        if not allowed_special:
            return self._encode_ordinary_batch(list(texts))
        return [self.encode(t, allowed_special) for t in texts]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        raise NotImplementedError

    # -- files -------------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write this tokenizer's files into an existing ``directory`` (``load_tokenizer`` reads them back)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, special_tokens={self._special})"


def _ids_list(ids: Iterable[int]) -> list[int]:
    if hasattr(ids, "tolist"):  # torch / numpy arrays
        ids = ids.tolist()  # type: ignore[union-attr]
    out = list(ids)
    if out and isinstance(out[0], list):
        raise ValueError("decode expects one sequence of ids, got a batch; decode each row")
    return [int(i) for i in out]


# ------------------------------------------------------------------------------------------------------------
# Character level


class CharTokenizer(Tokenizer):
    """One id per distinct character of the training text (sorted), then the special tokens."""

    kind = "char"

    def __init__(self, chars: Sequence[str], special_tokens: Sequence[str] = ()) -> None:
        super().__init__()
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("chars must be distinct single characters")
        self._chars = list(chars)
        self._stoi = {c: i for i, c in enumerate(self._chars)}
        self.add_special_tokens(list(special_tokens))

    @classmethod
    def from_text(cls, text: str, special_tokens: Sequence[str] = (EOT,)) -> CharTokenizer:
        return cls(sorted(set(text)), special_tokens)

    @property
    def vocab_size(self) -> int:
        return len(self._chars) + len(self._special)

    def token_to_id(self, token: str) -> int:
        if token in self._special:
            return self._special[token]
        if token in self._stoi:
            return self._stoi[token]
        raise KeyError(f"{token!r} is not in the vocabulary")

    def id_to_token(self, idx: int) -> str:
        if 0 <= idx < len(self._chars):
            return self._chars[idx]
        for tok, i in self._special.items():
            if i == idx:
                return tok
        raise KeyError(f"id {idx} is out of range for vocab_size {self.vocab_size}")

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        for tok in tokens:
            if tok not in self._special:
                self._special[tok] = self.vocab_size
        return [self._special[t] for t in tokens]

    def _encode_ordinary(self, text: str) -> list[int]:
        try:
            return [self._stoi[c] for c in text]
        except KeyError:
            unknown = sorted(set(text) - set(self._stoi))
            raise ValueError(f"characters not in the vocabulary: {unknown[:20]!r}") from None

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        n, special = len(self._chars), {i: t for t, i in self._special.items()}
        out = []
        for i in _ids_list(ids):
            if 0 <= i < n:
                out.append(self._chars[i])
            elif i in special:
                if not skip_special_tokens:
                    out.append(special[i])
            else:
                raise ValueError(f"id {i} is out of range for vocab_size {self.vocab_size}")
        return "".join(out)

    def save(self, directory: str | Path) -> None:
        data = {"format": "omnigpt-char", "version": 1, "chars": self._chars, "special_tokens": self._special}
        (Path(directory) / CHAR_FILE).write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> CharTokenizer:
        path = Path(directory) / CHAR_FILE
        data = _read_json(path)
        if data.get("format") != "omnigpt-char":
            raise TokenizerError(f"{path}: key 'format' is {data.get('format')!r}, expected 'omnigpt-char'")
        chars, special = data.get("chars"), data.get("special_tokens", {})
        if not isinstance(chars, list) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise TokenizerError(f"{path}: key 'chars' must be a list of single characters")
        if not isinstance(special, dict):
            raise TokenizerError(f"{path}: key 'special_tokens' must be an object")
        order = sorted(special, key=special.get)
        expect = list(range(len(chars), len(chars) + len(order)))
        if [special[t] for t in order] != expect:
            raise TokenizerError(f"{path}: key 'special_tokens' must number the tokens {expect}")
        return cls(chars, order)


def _read_json(path: Path) -> dict:
    return read_json_object(path, TokenizerError)


# ------------------------------------------------------------------------------------------------------------
# Detection


def load_tokenizer(directory: str | Path) -> Tokenizer:
    """Load the tokenizer saved in ``directory``: ``tokenizer.json`` or ``vocab.json`` + ``merges.txt`` (BPE),
    or ``char_tokenizer.json`` (characters)."""
    d = Path(directory)
    if not d.is_dir():
        raise TokenizerError(f"{d}: not a directory")
    if (d / HF_FILE).is_file() or ((d / VOCAB_FILE).is_file() and (d / MERGES_FILE).is_file()):
        return BPETokenizer.load(d)
    if (d / CHAR_FILE).is_file():
        return CharTokenizer.load(d)
    raise TokenizerError(f"{d}: no tokenizer files (expected {HF_FILE}, {VOCAB_FILE} + {MERGES_FILE}, "
                         f"or {CHAR_FILE})")


# ------------------------------------------------------------------------------------------------------------
# Byte-level BPE


# GPT-2's pre-tokenizer (encoder.py): contractions, letter runs, digit runs, other runs, whitespace, each run with at
# most one leading space. BPE never merges across these pieces, so each piece's ids can be cached.
GPT2_SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_CACHE_LIMIT = 200_000  # distinct pieces kept (a 5 MB corpus has ~36k)


class BPETokenizer(Tokenizer):
    """Byte-level BPE with GPT-2's pre-tokenizer regex, on a ``tokenizers.Tokenizer`` backend."""

    kind = "bpe"

    def __init__(self, backend: tokenizers.Tokenizer) -> None:
        super().__init__()
        self._tk = backend
        # Added tokens are never extracted from text by the backend; encode() cuts at the allowed ones itself.
        self._tk.encode_special_tokens = True
        self._refresh()
        # Fast path (tiktoken's design) for GPT-2-style pipelines: split with the `regex` module (~4x faster than
        # the backend's Oniguruma split), look each piece up in a cache, run the backend's BPE only on new pieces.
        pre = backend.pre_tokenizer
        self._split = None
        if backend.normalizer is None and isinstance(pre, tokenizers.pre_tokenizers.ByteLevel) and pre.use_regex \
                and not pre.add_prefix_space and all(t.special for t in backend.get_added_tokens_decoder().values()):
            self._split = regex.compile(GPT2_SPLIT)
        self._cache: dict[str, list[int]] = {}

    def _refresh(self) -> None:
        added = self._tk.get_added_tokens_decoder()  # id -> AddedToken
        self._special = {t.content: i for i, t in sorted(added.items()) if t.special}
        self._vocab_size = max([self._tk.get_vocab_size(with_added_tokens=False) - 1, *added]) + 1

    @property
    def backend(self) -> tokenizers.Tokenizer:
        return self._tk

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def token_to_id(self, token: str) -> int:
        idx = self._tk.token_to_id(token)
        if idx is None:
            raise KeyError(f"{token!r} is not in the vocabulary")
        return idx

    def id_to_token(self, idx: int) -> str:
        tok = self._tk.id_to_token(idx)
        if tok is None:
            raise KeyError(f"id {idx} is out of range for vocab_size {self.vocab_size}")
        return tok

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        new = [t for t in tokens if t not in self._special]
        if new:
            self._tk.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in new])
            self._refresh()
            self._cache = {}
        return [self._special[t] for t in tokens]

    # -- encode / decode ---------------------------------------------------------------------------------------
    def _backend_batch(self, texts: list[str]) -> list[list[int]]:
        try:
            return [e.ids for e in self._tk.encode_batch_fast(texts, add_special_tokens=False)]
        except Exception as e:  # lone surrogates cannot become UTF-8 bytes
            problem = next((p for p in map(_unicode_problem, texts) if p), None)
            raise ValueError(f"cannot encode text: {problem or e}") from None

    def _encode_ordinary(self, text: str) -> list[int]:
        return self._encode_ordinary_batch([text])[0]

    def _encode_ordinary_batch(self, texts: list[str]) -> list[list[int]]:
        if self._split is None:
            return self._backend_batch(texts)
        split = [self._split.findall(t) for t in texts]  # pieces BPE never merges across
        cache = self._cache  # other threads only ever add to it; a full cache is replaced, never cleared
        distinct = {p for pieces in split for p in pieces}
        new = [p for p in distinct if p not in cache]
        if new:
            if len(cache) + len(new) > _CACHE_LIMIT:
                cache = {p: cache[p] for p in distinct if p in cache}  # start over with this batch's pieces
            cache.update(zip(new, self._backend_batch(new), strict=True))
            self._cache = cache
        out = []
        for pieces in split:
            ids: list[int] = []
            for p in pieces:
                ids += cache[p]
            out.append(ids)
        return out

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = _ids_list(ids)
        if ids and (min(ids) < 0 or max(ids) >= self.vocab_size):
            bad = min(ids) if min(ids) < 0 else max(ids)
            raise ValueError(f"id {bad} is out of range for vocab_size {self.vocab_size}")
        return self._tk.decode(ids, skip_special_tokens=skip_special_tokens)

    # -- construction ------------------------------------------------------------------------------------------
    @staticmethod
    def _byte_level(model: tokenizers.models.Model) -> tokenizers.Tokenizer:
        tk = tokenizers.Tokenizer(model)
        tk.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tk.decoder = tokenizers.decoders.ByteLevel()
        tk.post_processor = tokenizers.processors.ByteLevel(trim_offsets=False)
        return tk

    @classmethod
    def from_vocab_merges(cls, vocab: dict[str, int], merges: list[tuple[str, str]],
                          special_tokens: Sequence[str] = (EOT,)) -> BPETokenizer:
        """GPT-2's format: byte-level token strings → ids, and the merge list in priority order."""
        tk = cls._byte_level(tokenizers.models.BPE(vocab=vocab, merges=merges))
        tok = cls(tk)
        tok.add_special_tokens([t for t in special_tokens])
        return tok

    @classmethod
    def train(cls, files: Sequence[str | Path], vocab_size: int, special_tokens: Sequence[str] = (EOT,),
              show_progress: bool = True, min_frequency: int = 2) -> BPETokenizer:
        """Learn a byte-level BPE on text files; special tokens take the first ids, the 256 bytes follow."""
        for f in files:
            if not Path(f).is_file():
                raise FileNotFoundError(f"training file not found: {f}")
        if vocab_size < 256 + len(special_tokens):
            raise ValueError(f"vocab_size {vocab_size} < 256 bytes + {len(special_tokens)} special tokens")
        tk = cls._byte_level(tokenizers.models.BPE())
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
            special_tokens=[tokenizers.AddedToken(t, special=True, normalized=False) for t in special_tokens],
            initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
        tk.train([str(f) for f in files], trainer)
        return cls(tk)

    # -- files -------------------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write ``tokenizer.json`` (HF tokenizers), GPT-2's ``vocab.json`` + ``merges.txt``, and transformers'
        ``tokenizer_config.json`` + ``special_tokens_map.json``, so ``GPT2TokenizerFast`` loads the directory."""
        d = Path(directory)
        text = self._tk.to_str(pretty=True)  # (encode_special_tokens is runtime state, not saved)
        (d / HF_FILE).write_text(text + "\n", encoding="utf-8")
        model = json.loads(text)["model"]
        vocab = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
        (d / VOCAB_FILE).write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
        merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        (d / MERGES_FILE).write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")
        eot = EOT if EOT in self._special else None
        added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                          "special": True} for t, i in self._special.items()}
        config = {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False, "bos_token": eot, "eos_token": eot,
                  "unk_token": eot, "pad_token": None, "model_max_length": 1024, "added_tokens_decoder": added,
                  "clean_up_tokenization_spaces": False, "omnigpt_kind": self.kind}
        (d / CONFIG_FILE).write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        specials = {"bos_token": eot, "eos_token": eot, "unk_token": eot} if eot else {}
        (d / "special_tokens_map.json").write_text(json.dumps(specials, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> BPETokenizer:
        """Read ``tokenizer.json`` when present, else ``vocab.json`` + ``merges.txt`` (+ specials from
        ``tokenizer_config.json``)."""
        d = Path(directory)
        if (d / HF_FILE).is_file():
            path = d / HF_FILE
            data = _read_json(path)
            model = data.get("model")
            if not isinstance(model, dict) or model.get("type") != "BPE":
                got = model.get("type") if isinstance(model, dict) else model
                raise TokenizerError(f"{path}: key 'model.type' is {got!r}; only BPE tokenizers are supported")
            try:
                tok = cls(tokenizers.Tokenizer.from_str(json.dumps(data)))
            except Exception as e:
                raise TokenizerError(f"{path}: not a valid tokenizers file ({e})") from None
            return tok._eos_from_config(d)
        vocab_path, merges_path = d / VOCAB_FILE, d / MERGES_FILE
        vocab = _read_json(vocab_path)
        for key, idx in vocab.items():
            if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
                raise TokenizerError(f"{vocab_path}: key {key!r} has id {idx!r}; ids must be non-negative integers")
            if key.endswith("</w>"):
                raise TokenizerError(f"{vocab_path}: key {key!r} ends in '</w>': a GPT-1 (openai-gpt) vocabulary, "
                                     "which is not byte-level BPE and is not supported")
        if len(set(vocab.values())) != len(vocab):
            raise TokenizerError(f"{vocab_path}: two tokens share an id")
        merges: list[tuple[str, str]] = []
        try:
            lines = merges_path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise TokenizerError(f"{merges_path}: not UTF-8 text ({e})") from None
        for n, line in enumerate(lines, 1):
            if (n == 1 and line.startswith("#version")) or not line.strip():
                continue
            parts = line.split(" ")
            if len(parts) != 2 or parts[0] not in vocab or parts[1] not in vocab or parts[0] + parts[1] not in vocab:
                raise TokenizerError(f"{merges_path}: line {n} ({line[:40]!r}) is not a merge of two vocabulary "
                                     f"tokens into a third")
            merges.append((parts[0], parts[1]))
        special = [EOT] if EOT in vocab else []
        if (d / CONFIG_FILE).is_file():
            added = _read_json(d / CONFIG_FILE).get("added_tokens_decoder", {})
            if not isinstance(added, dict):
                raise TokenizerError(f"{d / CONFIG_FILE}: key 'added_tokens_decoder' must be an object")
            ordered = sorted(added.items(), key=lambda kv: int(kv[0]))
            special = [v["content"] for _, v in ordered if isinstance(v, dict) and v.get("special")] or special
        return cls.from_vocab_merges(vocab, merges, special)._eos_from_config(d)

    def _eos_from_config(self, directory: Path) -> BPETokenizer:
        """Take ``eos_token`` from ``tokenizer_config.json`` when it names a registered special token (a chat model
        ends its turns with its own token, e.g. ``<|im_end|>``)."""
        if (directory / CONFIG_FILE).is_file():
            eos = _read_json(directory / CONFIG_FILE).get("eos_token")
            eos = eos.get("content") if isinstance(eos, dict) else eos
            if isinstance(eos, str) and eos in self._special:
                self.eos_token = eos
        return self


def _unicode_problem(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"character {text[e.start]!r} at index {e.start} is a lone surrogate, not valid Unicode text"
    return None
