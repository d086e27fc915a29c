"""``AutoTokenizer``, ``AutoModel`` and ``AutoModelForCausalLM``: transformers' entry points, offline.

``from_pretrained(name_or_path)`` resolves the name (``hf/sources.py``: a ``.gguf`` file or a directory plus
``gguf_file=``, a directory, an offline registry name such as ``"smollm2-135m-instruct"``, a Hub id in the local
Hugging Face cache; anything else raises the registry's one-line message) and picks the class by what it holds:

* GGUF (Llama architecture) → ``LlamaForCausalLM`` / ``LlamaModel`` and ``PreTrainedTokenizerFast`` with the file's
  special tokens and chat template;
* a directory, by ``config.json``'s ``model_type``: ``gpt2`` → ``GPT2LMHeadModel`` / ``GPT2Model`` and
  ``GPT2Tokenizer``; ``openai-gpt`` → ``OpenAIGPTLMHeadModel`` / ``OpenAIGPTModel``; ``omnigpt`` → the Llama
  facades when the config uses RoPE or RMSNorm, else the GPT-2 ones; the tokenizer from the directory's files and
  ``tokenizer_config.json``. Other model kinds raise, pointing at ``omnigpt.from_pretrained``;
* ``"gpt2"`` and its sizes: the tokenizer is OpenAI's BPE, built offline (the weights ship in no registry).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omnigpt.checkpoints.hf_config import load_config
from omnigpt.checkpoints.pretrained import model_type
from omnigpt.hf.gpt2 import (
    GPT2_NAMES,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2Tokenizer,
    OpenAIGPTLMHeadModel,
    OpenAIGPTModel,
)
from omnigpt.hf.llama import LlamaForCausalLM, LlamaModel, load_gguf_facade
from omnigpt.hf.sources import locate
from omnigpt.hf.tokenizer import PreTrainedTokenizerFast

# (kind, head) → facade class; kind "llama" is an omnigpt directory whose config uses the Llama options
CLASSES: dict[tuple[str, str], type] = {
    ("gpt2", "lm"): GPT2LMHeadModel, ("gpt2", "base"): GPT2Model,
    ("openai-gpt", "lm"): OpenAIGPTLMHeadModel, ("openai-gpt", "base"): OpenAIGPTModel,
    ("llama", "lm"): LlamaForCausalLM, ("llama", "base"): LlamaModel,
}


def _directory_kind(directory: Path) -> str:
    kind = model_type(directory)
    if kind == "omnigpt":
        cfg = load_config(directory)
        return "llama" if cfg.position_embedding == "rope" or cfg.norm == "rmsnorm" else "gpt2"
    return kind


def _load(name_or_path: str | Path, head: str, gguf_file: str | None, kwargs: dict[str, Any]) -> Any:
    kind, path = locate(name_or_path, gguf_file)
    if kind == "gguf":
        return load_gguf_facade(path, CLASSES["llama", head], head, **kwargs)
    found = _directory_kind(path)
    cls = CLASSES.get((found, head))
    if cls is None:
        raise ValueError(f"{path}: holds a {found!r} model; omnigpt's transformers-style classes serve GPT-2, GPT-1 "
                         f"and Llama-family language models (load this one with omnigpt.from_pretrained)")
    return cls.from_directory(path, **kwargs)


class AutoModelForCausalLM:
    """``from_pretrained(name_or_path)`` → ``GPT2LMHeadModel``, ``OpenAIGPTLMHeadModel`` or ``LlamaForCausalLM``,
    in eval mode, each with ``generate``."""

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, gguf_file: str | None = None, **kwargs: Any) -> Any:
        return _load(name_or_path, "lm", gguf_file, kwargs)


class AutoModel:
    """``from_pretrained(name_or_path)`` → the backbone: ``GPT2Model``, ``OpenAIGPTModel`` or ``LlamaModel``."""

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, gguf_file: str | None = None, **kwargs: Any) -> Any:
        return _load(name_or_path, "base", gguf_file, kwargs)


class AutoTokenizer:
    """``from_pretrained(name_or_path)`` → ``GPT2Tokenizer`` for GPT-2/GPT-1 directories and ``"gpt2"``, else
    ``PreTrainedTokenizerFast`` (GGUF files and offline names carry their chat template)."""

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, gguf_file: str | None = None,
                        **kwargs: Any) -> PreTrainedTokenizerFast:
        name = str(name_or_path)
        if gguf_file is None and not Path(name).exists() and name.removeprefix("openai-community/") in GPT2_NAMES:
            return GPT2Tokenizer.from_pretrained(name, **kwargs)  # OpenAI's BPE, offline
        kind, path = locate(name_or_path, gguf_file)
        if kind == "gguf":
            return PreTrainedTokenizerFast.from_gguf(path, **kwargs)
        gpt = (path / "config.json").is_file() and model_type(path) in ("gpt2", "openai-gpt")
        return (GPT2Tokenizer if gpt else PreTrainedTokenizerFast).from_directory(path, **kwargs)


__all__ = ["CLASSES", "AutoModel", "AutoModelForCausalLM", "AutoTokenizer"]
