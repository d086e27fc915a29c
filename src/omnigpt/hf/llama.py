"""HF ``LlamaModel`` / ``LlamaForCausalLM`` over omnigpt's Llama-family ``GPT`` (RoPE, RMSNorm, SwiGLU, GQA).

The Llama options are a configuration of omnigpt's one decoder (``models/gpt.py``), so these classes are the
GPT-2 facades (same ``forward`` keywords and output fields, ``generate`` on the causal LM) under transformers'
Llama names; only loading differs. ``from_pretrained`` reads a GGUF file (``path.gguf``, or a directory with
``gguf_file=``, as transformers spells it), an offline model name such as ``"smollm2-135m-instruct"``
(``hf/sources.py`` resolves names), or a directory omnigpt saved.

A GGUF model is built by ``checkpoints.gguf.load_gguf`` as a plain ``GPT`` and then becomes the facade class in
place (``__class__`` is set): the facades add methods, not state, so no second copy of the weights is made.

Deviation: transformers' own Llama directories (``model.layers.N.self_attn.q_proj`` keys) are not read;
``checkpoints/`` converts GPT-2/GPT-1 directories and GGUF files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from omnigpt.hf.generation import GenerationConfig, GenerationMixin
from omnigpt.hf.gpt2 import _HARMLESS, GPT2LMHeadModel, GPT2Model
from omnigpt.hf.sources import gguf_reader, locate


def load_gguf_facade(path: Path, cls: type[nn.Module], head: str, **kwargs: Any) -> Any:
    """The GGUF file's model as ``cls`` (``head`` "lm": the causal LM; "base": its backbone). transformers'
    ``dtype``/``torch_dtype`` and ``device_map`` (one device) are honoured, and omnigpt's ``quantize``."""
    from omnigpt.checkpoints.gguf import load_gguf

    dtype = kwargs.pop("torch_dtype", kwargs.pop("dtype", None))
    dtype = torch.float32 if dtype in (None, "auto") else dtype  # GGUF blocks are dequantized to float32
    device = kwargs.pop("device_map", None) or kwargs.pop("map_location", None)
    quantize = kwargs.pop("quantize", None)  # "int4" / "int8": omnigpt's CPU kernels (checkpoints.gguf)
    unknown = sorted(set(kwargs) - _HARMLESS)
    if unknown:
        raise TypeError(f"{cls.__name__}.from_pretrained: unsupported options {unknown}")
    model: nn.Module = load_gguf(path, dtype=dtype, quantize=quantize, reader=gguf_reader(path))
    if head == "base":
        model = model.transformer  # type: ignore[assignment]
    if not issubclass(cls, type(model)):
        raise TypeError(f"{cls.__name__} is not a facade of {type(model).__name__}")
    model.__class__ = cls
    if isinstance(model, GenerationMixin):
        model.generation_config = GenerationConfig.from_model_config(model.config)
    return model.to(device) if device is not None else model


class LlamaModel(GPT2Model):
    """HF ``LlamaModel``: the backbone; returns ``last_hidden_state`` (B, T, C)."""

    @classmethod
    def from_pretrained(cls, path: str | Path, gguf_file: str | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        kind, found = locate(path, gguf_file)
        return cls.from_directory(found, **kwargs) if kind == "dir" else load_gguf_facade(found, cls, "base", **kwargs)


class LlamaForCausalLM(GPT2LMHeadModel):
    """HF ``LlamaForCausalLM``: logits (B, T, V), the shifted loss with ``labels``, and ``generate``."""

    @classmethod
    def from_pretrained(cls, path: str | Path, gguf_file: str | None = None, **kwargs: Any) -> Any:  # type: ignore[override]
        kind, found = locate(path, gguf_file)
        return cls.from_directory(found, **kwargs) if kind == "dir" else load_gguf_facade(found, cls, "lm", **kwargs)


__all__ = ["LlamaForCausalLM", "LlamaModel", "load_gguf_facade"]
