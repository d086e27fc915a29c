"""``transformers``-shaped classes over omnigpt: the same names, call signatures and output fields.

``GPT2Tokenizer``/``GPT2TokenizerFast``, ``GPT2Model``, ``GPT2LMHeadModel``, ``GPT2ForSequenceClassification``,
``OpenAIGPTModel`` and ``OpenAIGPTLMHeadModel`` are thin subclasses of omnigpt's own models (same module names
as the HF classes: ``transformer``, ``lm_head``, ``score``, ``wte``, ``h``...) whose ``forward`` takes HF's
keywords and returns HF's output fields, so the article's snippet runs unchanged:

    tokenizer = GPT2Tokenizer.from_pretrained(path)
    model = GPT2Model.from_pretrained(path)
    outputs = model(**tokenizer("Hello, my dog is cute", return_tensors="pt"))

Differences on purpose: ``from_pretrained`` never touches the network unless ``download=True``; the tokenizer's
``from_pretrained("gpt2")`` builds OpenAI's GPT-2 BPE offline; ``past_key_values`` is omnigpt's preallocated
``KVCache`` list (pass it back as HF users do with a ``DynamicCache``); ``output_attentions`` is not supported.
Checkpoint conversion itself is in ``hf.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from omnigpt.checkpoints.hf import load_pretrained, not_local_error, save_pretrained
from omnigpt.config import GPTConfig
from omnigpt.models.gpt import GPT, GPTForSequenceClassification, GPTModel, KVCache, causal_lm_loss, make_kv_cache
from omnigpt.text.gpt2_vocab import gpt2_tokenizer
from omnigpt.text.tokenizer import Tokenizer, load_tokenizer

GPT2_NAMES = {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2"}  # all share OpenAI's GPT-2 BPE


class ModelOutput(dict):
    """A dict of the fields that are set, readable as attributes (unset fields read None) or by position, like
    ``transformers.utils.ModelOutput``."""

    _fields: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **fields: Any) -> None:
        super().__init__((k, fields[k]) for k in self._fields if fields.get(k) is not None)

    def __getattr__(self, name: str) -> Any:
        if name in self._fields:
            return self.get(name)
        raise AttributeError(f"{type(self).__name__} has no field {name!r}")

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            return super().__getitem__(key)
        return self.to_tuple()[key]

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(self.values())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.items())})"


class BaseModelOutputWithPast(ModelOutput):
    _fields = ("last_hidden_state", "past_key_values", "hidden_states")


class CausalLMOutputWithPast(ModelOutput):
    _fields = ("loss", "logits", "past_key_values", "hidden_states")


class SequenceClassifierOutputWithPast(ModelOutput):
    _fields = ("loss", "logits", "past_key_values", "hidden_states")


# ------------------------------------------------------------------------------------------------------------
# Models


class _Pretrained:
    """``from_pretrained`` / ``save_pretrained`` for the facade models."""

    _head: ClassVar[str]
    config: GPTConfig

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu",
                        dtype: torch.dtype | None = torch.float32, download: bool = False, **kwargs: Any) -> Any:
        """Load a local omnigpt or Hugging Face directory. A hub name is fetched only with ``download=True``.
        transformers' ``torch_dtype`` and ``device_map`` (one device) are honoured; other options that would
        change the result raise instead of being ignored."""

        dtype = kwargs.pop("torch_dtype", dtype)
        map_location = kwargs.pop("device_map", None) or map_location
        unknown = sorted(set(kwargs) - _HARMLESS)
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pretrained: unsupported options {unknown}")
        return load_pretrained(_resolve(path, download), map_location, dtype, cls._head,  # type: ignore[arg-type]
                               model_class=cls)  # type: ignore[arg-type]

    def save_pretrained(self, directory: str | Path, tokenizer: Tokenizer | GPT2Tokenizer | None = None) -> Path:
        if isinstance(tokenizer, GPT2Tokenizer):
            tokenizer = tokenizer.tokenizer
        return save_pretrained(self, directory, tokenizer)  # type: ignore[arg-type]


# transformers.from_pretrained options with nothing to do here (offline, local files, no remote code).
_HARMLESS = {"local_files_only", "trust_remote_code", "cache_dir", "low_cpu_mem_usage", "use_safetensors",
             "attn_implementation", "force_download", "resume_download"}


def _resolve(path: str | Path, download: bool) -> Path:
    p = Path(path)
    if p.is_dir():
        return p
    if not download:
        raise not_local_error(str(path))
    from huggingface_hub import snapshot_download  # optional, only on this explicit request

    return Path(snapshot_download(str(path), allow_patterns=["*.json", "*.safetensors", "*.txt"]))


def _check_unsupported(output_attentions: bool | None) -> None:
    if output_attentions:
        raise ValueError("output_attentions=True is not supported by omnigpt (attention runs fused)")


def _embed(model: GPTModel, input_ids: Tensor | None, inputs_embeds: Tensor | None,
           token_type_ids: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """HF adds ``wte(token_type_ids)`` to the token embeddings; omnigpt does it by passing inputs_embeds."""
    if token_type_ids is None:
        return input_ids, inputs_embeds
    if inputs_embeds is None:
        inputs_embeds = model.wte(input_ids)  # (B, T, C)
    return None, inputs_embeds + model.wte(token_type_ids)


def _cache(config: GPTConfig, past_key_values: list[KVCache] | None, use_cache: bool | None) -> list[KVCache] | None:
    if past_key_values is None and use_cache:
        return make_kv_cache(config)
    return past_key_values


class GPT2Model(_Pretrained, GPTModel):
    """HF ``GPT2Model``: the backbone; returns ``last_hidden_state`` (B, T, C)."""

    _head = "base"

    def forward(self, input_ids: Tensor | None = None, past_key_values: list[KVCache] | None = None,
                attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                use_cache: bool | None = None, output_attentions: bool | None = None,
                output_hidden_states: bool | None = None, return_dict: bool | None = None) -> Any:
        _check_unsupported(output_attentions)
        input_ids, inputs_embeds = _embed(self, input_ids, inputs_embeds, token_type_ids)
        cache = _cache(self.config, past_key_values, use_cache)
        out = super().forward(input_ids, attention_mask, position_ids, inputs_embeds, cache,
                              bool(output_hidden_states))
        res = BaseModelOutputWithPast(last_hidden_state=out.last_hidden_state, past_key_values=cache,
                                      hidden_states=out.hidden_states)
        return res if return_dict is not False else res.to_tuple()


class GPT2LMHeadModel(_Pretrained, GPT):
    """HF ``GPT2LMHeadModel``: logits (B, T, V); with ``labels`` the shifted next-token loss (-100 ignored)."""

    _head = "lm"

    def forward(self, input_ids: Tensor | None = None, past_key_values: list[KVCache] | None = None,
                attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                labels: Tensor | None = None, use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, logits_to_keep: int = 0) -> Any:
        _check_unsupported(output_attentions)
        input_ids, inputs_embeds = _embed(self.transformer, input_ids, inputs_embeds, token_type_ids)
        cache = _cache(self.config, past_key_values, use_cache)
        out = super().forward(input_ids, attention_mask, position_ids, None, inputs_embeds, cache,
                              bool(output_hidden_states), logits_to_keep)
        loss = causal_lm_loss(out.logits, labels) if labels is not None else None
        res = CausalLMOutputWithPast(loss=loss, logits=out.logits, past_key_values=cache,
                                     hidden_states=out.hidden_states)
        return res if return_dict is not False else res.to_tuple()


class GPT2ForSequenceClassification(_Pretrained, GPTForSequenceClassification):
    """HF ``GPT2ForSequenceClassification``: logits (B, num_labels) at the last non-pad token."""

    _head = "cls"

    def forward(self, input_ids: Tensor | None = None, past_key_values: list[KVCache] | None = None,
                attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                labels: Tensor | None = None, use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None) -> Any:
        _check_unsupported(output_attentions)
        if past_key_values is not None or use_cache:
            raise ValueError("sequence classification runs without a KV cache (past_key_values / use_cache)")
        input_ids, inputs_embeds = _embed(self.transformer, input_ids, inputs_embeds, token_type_ids)
        out = super().forward(input_ids, attention_mask, position_ids, None, inputs_embeds,
                              bool(output_hidden_states))
        loss = None
        if labels is not None:  # transformers' problem_type inference: 1 label regression, float labels multi-label
            if self.config.num_labels == 1:
                loss = F.mse_loss(out.logits.squeeze(-1).float(), labels.float().view(-1))
            elif labels.dtype.is_floating_point:
                loss = F.binary_cross_entropy_with_logits(out.logits.float(), labels.float())
            else:
                loss = F.cross_entropy(out.logits.float(), labels.view(-1))
        res = SequenceClassifierOutputWithPast(loss=loss, logits=out.logits, hidden_states=out.hidden_states)
        return res if return_dict is not False else res.to_tuple()


class OpenAIGPTModel(GPT2Model):
    """HF ``OpenAIGPTModel`` (GPT-1): no KV cache in transformers, so none here by default."""


class OpenAIGPTLMHeadModel(GPT2LMHeadModel):
    """HF ``OpenAIGPTLMHeadModel`` (GPT-1)."""


# ------------------------------------------------------------------------------------------------------------
# Tokenizer


class BatchEncoding(dict):
    """``input_ids`` and ``attention_mask`` as a dict with attribute access (``**inputs`` feeds a model)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: str | torch.device) -> BatchEncoding:
        return BatchEncoding({k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.items()})


class GPT2Tokenizer:
    """HF ``GPT2Tokenizer``/``GPT2TokenizerFast`` over an omnigpt ``Tokenizer``. Like transformers, special-token
    text such as ``<|endoftext|>`` in the input is parsed as the special token (``Tokenizer.encode`` does not)."""

    model_input_names = ("input_ids", "attention_mask")

    def __init__(self, tokenizer: Tokenizer, model_max_length: int = 1024) -> None:
        self.tokenizer = tokenizer
        self.model_max_length = model_max_length
        self.padding_side = "right"
        self.truncation_side = "right"
        eot = "<|endoftext|>" if "<|endoftext|>" in tokenizer.special_tokens else None
        self.bos_token = self.eos_token = self.unk_token = eot
        self.pad_token: str | None = None

    @classmethod
    def from_pretrained(cls, path: str | Path, download: bool = False, **_: Any) -> GPT2Tokenizer:
        """A local directory (tokenizer.json or vocab.json + merges.txt), or ``"gpt2"`` (and its sizes), built
        offline from OpenAI's BPE file."""
        p = Path(path)
        if not p.is_dir() and str(path).removeprefix("openai-community/") in GPT2_NAMES:
            return cls(gpt2_tokenizer())
        return cls(load_tokenizer(_resolve(path, download)))

    def save_pretrained(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(d)
        return d

    # -- vocabulary --------------------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def __len__(self) -> int:
        return self.tokenizer.vocab_size

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.tokenizer.token_to_id(token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        if isinstance(tokens, str):
            return self.tokenizer.token_to_id(tokens)
        return [self.tokenizer.token_to_id(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        if isinstance(ids, int):
            return self.tokenizer.id_to_token(ids)
        return [self.tokenizer.id_to_token(int(i)) for i in ids]

    # -- encode / decode ---------------------------------------------------------------------------------------
    def encode(self, text: str, return_tensors: str | None = None, **_: Any) -> Any:
        ids = self.tokenizer.encode(text, allowed_special=True)
        return torch.tensor([ids], dtype=torch.long) if return_tensors == "pt" else ids

    def decode(self, ids: Any, skip_special_tokens: bool = False, **_: Any) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False, **_: Any) -> list[str]:
        rows = sequences.tolist() if hasattr(sequences, "tolist") else sequences
        return [self.decode(r, skip_special_tokens) for r in rows]

    def __call__(self, text: str | Sequence[str], padding: bool | str = False, truncation: bool | str = False,
                 max_length: int | None = None, return_tensors: str | None = None,
                 return_attention_mask: bool = True, add_special_tokens: bool = True) -> BatchEncoding:
        """Token ids (and attention mask) for one text or a batch; ``return_tensors="pt"`` gives (B, T) tensors."""
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        rows = [self.tokenizer.encode(t, allowed_special=True) for t in texts]
        if truncation and truncation != "do_not_truncate":
            limit = max_length or self.model_max_length
            rows = [r[:limit] if self.truncation_side == "right" else r[-limit:] for r in rows]
        masks = [[1] * len(r) for r in rows]
        if padding and padding != "do_not_pad":
            if self.pad_token_id is None:
                raise ValueError("Asking to pad but the tokenizer has no pad token: set tokenizer.pad_token "
                                 "(e.g. tokenizer.pad_token = tokenizer.eos_token)")
            width = max_length if padding == "max_length" and max_length else max(map(len, rows), default=0)
            pad = self.pad_token_id
            for i, r in enumerate(rows):
                n = width - len(r)
                rows[i] = r + [pad] * n if self.padding_side == "right" else [pad] * n + r
                masks[i] = masks[i] + [0] * n if self.padding_side == "right" else [0] * n + masks[i]
        if return_tensors is not None:
            if return_tensors not in ("pt", "np"):
                raise ValueError(f"return_tensors={return_tensors!r} is not supported (use 'pt' or 'np')")
            if len({len(r) for r in rows}) > 1:
                raise ValueError("Unable to create a tensor from rows of different lengths: pass padding=True "
                                 "(and set tokenizer.pad_token)")
            rows = torch.tensor(rows, dtype=torch.long)  # type: ignore[assignment]
            masks = torch.tensor(masks, dtype=torch.long)  # type: ignore[assignment]
            if return_tensors == "np":
                rows, masks = rows.numpy(), masks.numpy()  # type: ignore[attr-defined]
        elif single:
            rows, masks = rows[0], masks[0]  # type: ignore[assignment]
        enc = BatchEncoding(input_ids=rows)
        if return_attention_mask:
            enc["attention_mask"] = masks
        return enc

    def __repr__(self) -> str:
        return f"GPT2Tokenizer({self.tokenizer!r}, pad_token={self.pad_token!r})"


GPT2TokenizerFast = GPT2Tokenizer
