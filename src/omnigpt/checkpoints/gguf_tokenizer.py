"""The tokenizer a GGUF file describes, and chat models loaded whole from one GGUF file.

A GGUF file carries its tokenizer as metadata instead of a ``tokenizer.json``: the vocabulary
(``tokenizer.ggml.tokens``, in the byte-level alphabet for ``gpt2``-type vocabularies), the merges in priority
order, each token's type (3 = control, i.e. a special token such as ``<|im_start|>``; 4 = user-defined), the
bos/eos/pad ids, a pre-tokenizer name (``tokenizer.ggml.pre``) and the Jinja chat template. ``GGUFTokenizer``
rebuilds it on the ``tokenizers`` backend as an omnigpt ``BPETokenizer``: the same ``encode``/``decode``/``save``
interface, plus the file's ``eos_token_id``, ``bos_token_id`` and ``chat_template``.

The pre-tokenizer is chosen by name, as llama.cpp does (``llama-vocab.cpp``). ``smollm`` (SmolLM/SmolLM2, from
StarCoder) isolates every digit and then applies GPT-2's split — HF's SmolLM2 ``tokenizer.json`` says the same
with ``Digits(individual_digits=True)`` + ``ByteLevel``. ``qwen2`` (Qwen2/2.5) is one regex (``QWEN2_SPLIT``,
llama.cpp's and Qwen's ``tokenizer.json``'s): case-insensitive contractions, letters with at most one leading
non-letter, every digit alone, punctuation runs with their trailing newlines, whitespace. ``gpt2``/``default`` is
GPT-2's split alone. Other names raise rather than silently splitting text differently from the model's training.
Qwen's own ``tokenizer.json`` also NFC-normalizes text first; llama.cpp and ``transformers``' GGUF tokenizer do not,
and neither do we (the ids differ only on text that is not already NFC).

Deviation from ``transformers`` 5.24: its GGUF tokenizer has no ``smollm`` entry and falls back to GPT-2's split.
For SmolLM2 the ids still agree wherever numbers are ASCII digits (the vocabulary has no token joining a digit to
anything), but differ where a space precedes another numeral (" ١٢٣", " Ⅻ", " ½": GPT-2's split keeps the space
with it, llama.cpp and the original tokenizer.json do not); we follow llama.cpp (tests/test_llama.py checks both).

``load_gguf_pretrained(path)`` reads the file once and returns (model, tokenizer): the offline registry's loader
for ``smollm2-135m-instruct`` and ``qwen2.5-coder-0.5b-instruct``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tokenizers
import tokenizers.decoders
import tokenizers.models
import tokenizers.pre_tokenizers
import tokenizers.processors

from omnigpt.checkpoints.gguf import GGUFError, load_gguf, open_gguf, read_fields
from omnigpt.text.tokenizer import CONFIG_FILE, BPETokenizer, TokenizerError

if TYPE_CHECKING:
    from omnigpt.models.gpt import GPT

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types that are matched whole in text
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
               r"|\s+(?!\S)|\s+")  # the qwen2 pre-tokenizer (llama-vocab.cpp LLAMA_VOCAB_PRE_TYPE_QWEN2)


def _byte_alphabet() -> dict[int, str]:
    """GPT-2's byte → printable character table (``bytes_to_unicode``): token strings are spelled in it."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _pre_tokenizer(name: str, path: Any) -> tokenizers.pre_tokenizers.PreTokenizer:
    byte_level = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)  # GPT-2's split
    if name in ("gpt2", "default"):
        return byte_level
    if name in ("smollm", "starcoder", "refact"):  # every digit alone, then GPT-2's split
        return tokenizers.pre_tokenizers.Sequence([tokenizers.pre_tokenizers.Digits(individual_digits=True),
                                                   byte_level])
    if name == "qwen2":  # the regex splits; ByteLevel only maps bytes to the alphabet
        return tokenizers.pre_tokenizers.Sequence([
            tokenizers.pre_tokenizers.Split(tokenizers.Regex(QWEN2_SPLIT), behavior="isolated"),
            tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    raise GGUFError(f"{path}: key 'tokenizer.ggml.pre' is {name!r}; omnigpt knows 'gpt2', 'default', 'smollm', "
                    f"'starcoder', 'refact', 'qwen2'")


class GGUFTokenizer(BPETokenizer):
    """Byte-level BPE from a GGUF file's metadata, with the file's special-token ids and chat template.

    Like every omnigpt tokenizer, ``encode`` treats special-token strings in text as text unless
    ``allowed_special`` names them; a rendered chat prompt is encoded with ``allowed_special=True``."""

    def __init__(self, backend: tokenizers.Tokenizer, *, eos_token_id: int | None, bos_token_id: int | None = None,
                 pad_token_id: int | None = None, chat_template: str | None = None, add_bos: bool = False) -> None:
        super().__init__(backend)
        self._eos, self._bos, self._pad = eos_token_id, bos_token_id, pad_token_id
        if eos_token_id is not None:  # the string too (chat templates render ``eos_token``), not GPT-2's default
            self.eos_token = backend.id_to_token(eos_token_id)
        self.chat_template = chat_template  # Jinja source (rendered by omnigpt.text.chat_template)
        self.add_bos = add_bos  # the file's tokenizer.ggml.add_bos_token: callers prepend bos_token_id when True

    @property
    def eos_token_id(self) -> int | None:
        """The file's end-of-sequence id (SmolLM2: ``<|im_end|>`` = 2, the end of a chat turn)."""
        return self._eos

    @property
    def bos_token_id(self) -> int | None:
        return self._bos

    @property
    def pad_token_id(self) -> int | None:
        return self._pad

    def _token(self, idx: int | None) -> str | None:
        return None if idx is None else self.id_to_token(idx)

    @classmethod
    def from_gguf(cls, path: str | Path, reader: Any = None) -> GGUFTokenizer:
        """Build from a GGUF file (or an open ``gguf.GGUFReader`` of it, to read the file only once)."""
        path = Path(path)
        meta = read_fields(reader if reader is not None else open_gguf(path), path, (
            "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
            "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.chat_template"))
        model = meta.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise GGUFError(f"{path}: key 'tokenizer.ggml.model' is {model!r}; omnigpt reads byte-level BPE ('gpt2') "
                            f"vocabularies")
        tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges")
        if not isinstance(tokens, list) or not tokens:
            raise GGUFError(f"{path}: key 'tokenizer.ggml.tokens' is missing or empty")
        if not isinstance(merges, list):
            raise GGUFError(f"{path}: key 'tokenizer.ggml.merges' is missing")
        types = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
        if len(types) != len(tokens):
            raise GGUFError(f"{path}: key 'tokenizer.ggml.token_type' has {len(types)} entries for {len(tokens)} "
                            f"tokens")
        # Tokens are spelled in the byte alphabet; one that is not (a mislabelled text token) is respelled.
        spelling = _byte_alphabet()
        alphabet = set(spelling.values())
        spelled = [t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")) for t in tokens]
        vocab = {t: i for i, t in enumerate(spelled)}
        if len(vocab) != len(tokens):
            raise GGUFError(f"{path}: key 'tokenizer.ggml.tokens' lists a token twice")
        pairs = []
        for n, merge in enumerate(merges):
            parts = merge.split(" ")
            if len(parts) != 2 or parts[0] + parts[1] not in vocab:
                raise GGUFError(f"{path}: key 'tokenizer.ggml.merges' entry {n} ({merge[:40]!r}) is not a merge of "
                                f"two tokens into a third")
            pairs.append((parts[0], parts[1]))
        backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=pairs, fuse_unk=False))
        backend.pre_tokenizer = _pre_tokenizer(str(meta.get("tokenizer.ggml.pre", "default")), path)
        backend.decoder = tokenizers.decoders.ByteLevel()
        backend.post_processor = tokenizers.processors.ByteLevel(trim_offsets=False)
        backend.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                                    for t, kind in zip(tokens, types, strict=True) if kind == CONTROL])
        backend.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False)
                            for t, kind in zip(tokens, types, strict=True) if kind == USER_DEFINED])
        ids = {}
        for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
            value = meta.get(f"tokenizer.ggml.{key}")
            if value is not None and not 0 <= value < len(tokens):
                raise GGUFError(f"{path}: key 'tokenizer.ggml.{key}' = {value} is outside the vocabulary")
            ids[key] = value
        template = meta.get("tokenizer.chat_template")
        return cls(backend, eos_token_id=ids["eos_token_id"], bos_token_id=ids["bos_token_id"],
                   pad_token_id=ids["padding_token_id"], chat_template=template if isinstance(template, str) else None,
                   add_bos=bool(meta.get("tokenizer.ggml.add_bos_token", False)))

    def save(self, directory: str | Path) -> None:
        """``BPETokenizer``'s files, with this vocabulary's bos/eos/pad tokens and the chat template in
        ``tokenizer_config.json`` (what ``transformers`` and ``text.chat_template.load_chat_template`` read)."""
        super().save(directory)
        path = Path(directory) / CONFIG_FILE
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise TokenizerError(f"{path}: cannot update ({e})") from None
        config.update(bos_token=self._token(self._bos), eos_token=self._token(self._eos),
                      pad_token=self._token(self._pad), unk_token=None, model_max_length=None,
                      add_bos_token=self.add_bos, tokenizer_class="PreTrainedTokenizerFast")
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template
        path.write_text(json.dumps(config, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        specials = {k: v for k, v in (("bos_token", self._token(self._bos)), ("eos_token", self._token(self._eos)),
                                      ("pad_token", self._token(self._pad))) if v is not None}
        (Path(directory) / "special_tokens_map.json").write_text(json.dumps(specials, indent=1) + "\n",
                                                                  encoding="utf-8")


def load_gguf_pretrained(path: str | Path, dtype: Any = None, quantize: str | None = None) -> tuple[GPT, GGUFTokenizer]:
    """Model and tokenizer from one GGUF file, parsed once (float32 weights unless ``dtype``; ``quantize`` as in
    ``checkpoints.gguf.load_gguf``)."""
    import torch

    path = Path(path)
    reader = open_gguf(path)
    model = load_gguf(path, dtype=dtype or torch.float32, quantize=quantize, reader=reader)
    return model, GGUFTokenizer.from_gguf(path, reader)


__all__ = ["GGUFTokenizer", "load_gguf_pretrained"]
