"""omnigpt: GPT-1/2/3 and multimodal transformers in readable PyTorch.

The public API, re-exported lazily (``import omnigpt`` costs nothing until a name is used); ``omnigpt.load(name or
path)`` is the one loader (model, tokenizer or processor, chat template, kind). The package is layered; each folder
imports only from the folders listed before it (``tests/test_layers.py`` enforces the order, lazy, type-only and
``"module:function"`` string imports included):

    config.py     frozen configs and named presets
    files/        atomic directories with a SHA-256 manifest, pinned registry assets
    kernels/      CPU speed only: planned bf16 GEMMs, fused LM-head loss, int4/int8 linears, the dtype by hardware
    models/       GPT-1/2/3 decoder, vision and audio encoders, Whisper, MobileNetV2, multimodal fusion — no file I/O
    text/         tokenizers (char, byte-level BPE, exact GPT-2), chat templates, image/audio processors
    checkpoints/  the pretrained layer (every model_type), HF/GGUF/CT2 readers, trainer state, ``load``
    data/         corpora, token shards, multimodal data recipes, batching
    generate/     sampling filters, KV-cache decoding as an iterator, compiled decode, text streaming, Whisper
    train/        the one Trainer, the task protocol and registry, recipes, schedules, LM evaluation
    apps/         one folder per application (task, data, evaluation, pipeline, README); apps/common shared
    hf/           transformers-shaped classes (``GPT2Tokenizer``, ``GPT2Model`` ...) and ``pipeline(task)``
    study/        the article's claims, measured (scaling, attention, multimodal curves)
    serve/        OpenAI-compatible API and chat page
    cli/          ``omnigpt <command>``
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "PRESETS": "omnigpt.config", "GPTConfig": "omnigpt.config",
    "GPT": "omnigpt.models.gpt", "GPTModel": "omnigpt.models.gpt", "GPTOutput": "omnigpt.models.gpt",
    "GPTForSequenceClassification": "omnigpt.models.gpt", "KVCache": "omnigpt.models.kv_cache",
    "make_kv_cache": "omnigpt.models.kv_cache",
    "load_pretrained": "omnigpt.checkpoints.pretrained", "save_pretrained": "omnigpt.checkpoints.pretrained",
    "from_pretrained": "omnigpt.checkpoints.registry", "load": "omnigpt.checkpoints.registry",
    "BPETokenizer": "omnigpt.text.tokenizer", "CharTokenizer": "omnigpt.text.tokenizer",
    "Tokenizer": "omnigpt.text.tokenizer", "load_tokenizer": "omnigpt.text.tokenizer",
    "gpt2_tokenizer": "omnigpt.text.gpt2_vocab",
    "generate_text": "omnigpt.generate.text", "stream_text": "omnigpt.generate.text",
    **{name: "omnigpt.hf.gpt2" for name in (
        "GPT2ForSequenceClassification", "GPT2LMHeadModel", "GPT2Model", "GPT2Tokenizer", "GPT2TokenizerFast",
        "OpenAIGPTLMHeadModel", "OpenAIGPTModel")},
    "AutoModel": "omnigpt.hf.auto", "AutoModelForCausalLM": "omnigpt.hf.auto", "AutoTokenizer": "omnigpt.hf.auto",
    "pipeline": "omnigpt.hf.pipelines",
    "LlamaForCausalLM": "omnigpt.hf.llama", "LlamaModel": "omnigpt.hf.llama",
    "PreTrainedTokenizerFast": "omnigpt.hf.tokenizer", "GenerationConfig": "omnigpt.hf.generation",
    "Trainer": "omnigpt.train.trainer", "train": "omnigpt.train.trainer", "load_recipe": "omnigpt.apps",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'omnigpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
