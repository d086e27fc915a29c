"""``transformers``-shaped classes over omnigpt: the same names, call signatures and output fields.

``GPT2Tokenizer``/``GPT2TokenizerFast``, ``GPT2Model``, ``GPT2LMHeadModel``, ``GPT2ForSequenceClassification``,
``OpenAIGPTModel`` and ``OpenAIGPTLMHeadModel`` are thin subclasses of omnigpt's own models (same module names
as the HF classes: ``transformer``, ``lm_head``, ``score``, ``wte``, ``h``...) whose ``forward`` takes HF's
keywords and returns HF's output fields, so the article's snippet runs unchanged:

    tokenizer = GPT2Tokenizer.from_pretrained(path)
    model = GPT2Model.from_pretrained(path)
    outputs = model(**tokenizer("Hello, my dog is cute", return_tensors="pt"))

The causal-LM classes also have transformers' ``generate`` (``hf/generation.py``); the tokenizer is the general
``hf/tokenizer.py`` class with GPT-2's special tokens; ``hf/auto.py`` picks these classes for GPT-2/GPT-1 directories.

Differences on purpose: ``from_pretrained`` never touches the network unless ``download=True``; the tokenizer's
``from_pretrained("gpt2")`` builds OpenAI's GPT-2 BPE offline; ``past_key_values`` is omnigpt's preallocated
``KVCache`` list (pass it back as HF users do with a ``DynamicCache``); ``output_attentions`` is not supported.
Checkpoint conversion itself is in ``hf.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from omnigpt.checkpoints.hf import load_gpt
from omnigpt.checkpoints.pretrained import save_pretrained
from omnigpt.config import GPTConfig
from omnigpt.generate.inputs import check_inputs
from omnigpt.hf.generation import GenerationConfig, GenerationMixin
from omnigpt.hf.tokenizer import PreTrainedTokenizerFast
from omnigpt.models.gpt import GPT, GPTForSequenceClassification, GPTModel, causal_lm_loss
from omnigpt.models.kv_cache import KVCache, make_kv_cache
from omnigpt.text.gpt2_vocab import gpt2_tokenizer
from omnigpt.text.tokenizer import Tokenizer

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
        return cls.from_directory(_resolve(path, download), map_location, dtype, **kwargs)

    @classmethod
    def from_directory(cls, directory: Path, map_location: str | torch.device = "cpu",
                       dtype: torch.dtype | None = torch.float32, **kwargs: Any) -> Any:
        """``from_pretrained`` once the directory is known (``hf/auto.py`` resolves names itself)."""
        dtype = kwargs.pop("torch_dtype", kwargs.pop("dtype", dtype))
        dtype = None if dtype == "auto" else dtype  # transformers' "auto": the dtype the weights are stored in
        map_location = kwargs.pop("device_map", None) or map_location
        unknown = sorted(set(kwargs) - _HARMLESS)
        if unknown:
            raise TypeError(f"{cls.__name__}.from_pretrained: unsupported options {unknown}")
        model = load_gpt(directory, map_location, dtype, cls._head,  # type: ignore[arg-type]
                                model_class=cls)  # type: ignore[arg-type]
        if isinstance(model, GenerationMixin):  # generation_config.json beside the weights, as transformers reads it
            model.generation_config = GenerationConfig.from_pretrained(directory, model.config)
        return model

    def save_pretrained(self, directory: str | Path,
                        tokenizer: Tokenizer | PreTrainedTokenizerFast | None = None) -> Path:
        if isinstance(tokenizer, PreTrainedTokenizerFast):
            tokenizer = tokenizer.tokenizer
        return save_pretrained(self, directory, tokenizer)  # type: ignore[arg-type]


# transformers.from_pretrained options with nothing to do here (offline, local files, no remote code).
_HARMLESS = {"local_files_only", "trust_remote_code", "cache_dir", "low_cpu_mem_usage", "use_safetensors",
             "attn_implementation", "force_download", "resume_download"}


def _resolve(path: str | Path, download: bool) -> Path:
    """A local directory, else the Hub id's copy in the local Hugging Face cache, else (only with ``download``) a
    download; otherwise one line saying why (for GPT-2: its weights ship in no package registry) and which models
    load offline."""
    from omnigpt.checkpoints import registry

    p = Path(path)
    if p.is_dir():
        return p
    cached = registry.hf_cache_dir(str(path))
    if cached is not None:
        return cached
    if not download:
        raise registry.not_found(str(path))
    from huggingface_hub import snapshot_download  # optional, only on this explicit request

    return Path(snapshot_download(str(path), allow_patterns=["*.json", "*.safetensors", "*.txt"]))


def _check_unsupported(output_attentions: bool | None) -> None:
    if output_attentions:
        raise ValueError("output_attentions=True is not supported by omnigpt (attention runs fused)")


def _checked_mask(config: GPTConfig, input_ids: Tensor | None, inputs_embeds: Tensor | None,
                  attention_mask: Tensor | None, position_ids: Tensor | None,
                  past_key_values: list[KVCache] | None) -> Tensor | None:
    """Check the inputs (``generate.inputs.check_inputs``: the model trusts its own); the mask, None if no padding."""
    past = past_key_values[0].pos if past_key_values else 0
    padded = check_inputs(config, input_ids, inputs_embeds, attention_mask, position_ids, past)
    return attention_mask if padded else None


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
        attention_mask = _checked_mask(self.config, input_ids, inputs_embeds, attention_mask, position_ids,
                                       past_key_values)
        input_ids, inputs_embeds = _embed(self, input_ids, inputs_embeds, token_type_ids)
        cache = _cache(self.config, past_key_values, use_cache)
        out = super().forward(input_ids, attention_mask, position_ids, inputs_embeds, cache,
                              bool(output_hidden_states))
        res = BaseModelOutputWithPast(last_hidden_state=out.last_hidden_state, past_key_values=cache,
                                      hidden_states=out.hidden_states)
        return res if return_dict is not False else res.to_tuple()


class GPT2LMHeadModel(GenerationMixin, _Pretrained, GPT):
    """HF ``GPT2LMHeadModel``: logits (B, T, V); with ``labels`` the shifted next-token loss (-100 ignored);
    ``generate`` as in transformers (``hf/generation.py``)."""

    _head = "lm"

    def forward(self, input_ids: Tensor | None = None, past_key_values: list[KVCache] | None = None,
                attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                labels: Tensor | None = None, use_cache: bool | None = None,
                output_attentions: bool | None = None, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, logits_to_keep: int = 0) -> Any:
        _check_unsupported(output_attentions)
        attention_mask = _checked_mask(self.config, input_ids, inputs_embeds, attention_mask, position_ids,
                                       past_key_values)
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
        _checked_mask(self.config, input_ids, inputs_embeds, attention_mask, position_ids, None)  # pools by the mask
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
# Tokenizer (the general class is in hf/tokenizer.py)


class GPT2Tokenizer(PreTrainedTokenizerFast):
    """HF ``GPT2Tokenizer``/``GPT2TokenizerFast``: ``<|endoftext|>`` is bos, eos and unk, there is no pad token
    (set ``tokenizer.pad_token = tokenizer.eos_token`` to pad), 1024 positions."""

    def __init__(self, tokenizer: Tokenizer, model_max_length: int = 1024, **settings: Any) -> None:
        eot = "<|endoftext|>" if "<|endoftext|>" in tokenizer.special_tokens else None
        for key in ("bos_token", "eos_token", "unk_token"):
            settings.setdefault(key, eot)
        super().__init__(tokenizer, model_max_length=model_max_length, **settings)

    @classmethod
    def from_pretrained(cls, path: str | Path, download: bool = False, **kwargs: Any) -> GPT2Tokenizer:
        """A local directory (tokenizer.json or vocab.json + merges.txt), or ``"gpt2"`` (and its sizes), built
        offline from OpenAI's BPE file."""
        p = Path(path)
        if not p.is_dir() and str(path).removeprefix("openai-community/") in GPT2_NAMES:
            return cls.build(gpt2_tokenizer(), {}, **kwargs)  # type: ignore[return-value]
        return cls.from_directory(_resolve(path, download), **kwargs)  # type: ignore[return-value]


GPT2TokenizerFast = GPT2Tokenizer
