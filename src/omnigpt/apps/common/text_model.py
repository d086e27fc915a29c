"""What the language-application tasks (``classify``, ``seq2seq``) share: where the model and tokenizer come from,
the model section of their recipes, and the task card saved with the model.

A model comes from one of three places (``AppModelSpec``):

* ``config`` — from scratch: a preset + GPTConfig overrides (as the ``lm`` task's model section), with a tokenizer
  trained on the task's train split (``tokenizer: bpe:VOCAB`` or ``char``) by ``prepare`` and kept in
  ``OUT_DIR/tokenizer`` (resumes and every rank read the same one);
* ``init_from`` a run or checkpoint directory — GPT-1's recipe: a language model pre-trained by the ``lm`` task,
  then fine-tuned here with its own tokenizer;
* ``init_from`` an offline name (``smollm2-135m-instruct``, ``checkpoints.registry``) — a pretrained model, fully
  fine-tuned or, with ``lora``, frozen under LoRA adapters.

The task card (``text/task_card.py``, saved in ``config.extra["task"]``) travels inside ``config.json``, so
``omnigpt.pipeline`` prompts a saved model the way it was trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from omnigpt.models.gpt import GPT
from omnigpt.models.lora import LoRAConfig
from omnigpt.train.recipe import RecipeError, model_config


@dataclass
class AppModelSpec:
    """Exactly one of ``config`` (from scratch) and ``init_from`` (a run, a checkpoint or an offline name)."""

    config: dict[str, Any] | None = None  # {"preset": name, **GPTConfig overrides}
    init_from: str | None = None  # runs/NAME, a checkpoint directory, or an offline name (smollm2-135m-instruct)
    lora: LoRAConfig | None = None  # with init_from: freeze the base, train adapters (and the task's new head)


def check_model_spec(r: Any) -> None:
    m = r.model
    if (m.config is None) == (m.init_from is None):
        raise RecipeError("model: give exactly one of model.config (from scratch: {preset: ..., overrides}) and "
                          "model.init_from (a run directory, a checkpoint or an offline model name)")
    if m.config is not None:
        model_config(m.config, 256)  # preset and overrides valid (the vocabulary comes later)
    if m.lora is not None and m.init_from is None:
        raise RecipeError("model.lora: adapters need a pretrained base (model.init_from)")
    if m.lora is not None and r.parallelism == "fsdp":
        raise RecipeError("parallelism: fsdp is not supported with model.lora (the adapters are small: use ddp)")


def tokenizer_dir(r: Any) -> Path:
    return Path(r.out_dir) / "tokenizer"


def train_tokenizer(spec: str, texts: list[str], out: Path, specials: list[str]) -> None:
    """Train ``spec`` (``bpe:VOCAB`` | ``char``) on the train split's ``texts`` and save it to ``out`` (once)."""
    from omnigpt.data.shards import DataSpec, build_tokenizer
    from omnigpt.data.sources import Document
    from omnigpt.files.atomic import atomic_directory

    if (out / "tokenizer_config.json").is_file() or (out / "tokenizer.json").is_file():
        return
    docs = [Document(str(i), t) for i, t in enumerate(texts)]
    tok = build_tokenizer(DataSpec(tokenizer=spec), docs, docs, progress=False)
    tok.add_special_tokens(specials)
    with atomic_directory(out) as tmp:
        tok.save(tmp)


def load_base(r: Any, specials: list[str]) -> tuple[GPT, Any, str | None]:
    """(the language model to start from, its tokenizer, its chat template or None) for the recipe's model
    section; from scratch the tokenizer is the one ``prepare`` trained."""
    from omnigpt.text.tokenizer import load_tokenizer

    m = r.model
    if m.config is not None:
        tok = load_tokenizer(tokenizer_dir(r))
        try:
            cfg = model_config(m.config, tok.vocab_size)
        except ValueError as e:
            raise RecipeError(f"model.config: {e}") from None
        return GPT(cfg), tok, None
    from omnigpt.checkpoints.registry import load

    model, tok, template = load(m.init_from)[:3]  # a run, a checkpoint directory or an offline name
    if not isinstance(model, GPT):
        raise ValueError(f"model.init_from {m.init_from}: a {type(model).__name__}, not a GPT language model")
    if template is not None:
        from omnigpt.checkpoints.gguf_tokenizer import GGUFTokenizer

        if not isinstance(tok, GGUFTokenizer):  # keep the template (and eos) in the checkpoints this run writes
            tok = GGUFTokenizer(tok.backend, eos_token_id=tok.eos_token_id, chat_template=template)
    missing = [s for s in specials if s not in (getattr(tok, "special_tokens", None) or {})]
    if missing and template is None:
        raise ValueError(f"model.init_from {m.init_from}: its tokenizer lacks the special tokens {missing}")
    return model.train(), tok, template


def with_card(model: nn.Module, card: dict[str, Any], **extra: Any) -> None:
    """Put the task card (and other metadata, e.g. ``id2label``) into the model's config, saved in config.json."""
    model.config = dataclasses.replace(model.config, extra={**model.config.extra, "task": card, **extra})
    if hasattr(model, "transformer") and hasattr(model.transformer, "config"):
        model.transformer.config = model.config


__all__ = ["AppModelSpec", "check_model_spec", "load_base", "tokenizer_dir", "train_tokenizer", "with_card"]
