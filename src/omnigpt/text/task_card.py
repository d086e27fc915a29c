"""The task card: how an application model is prompted, saved inside its ``config.json`` (``extra["task"]``).

Training (``apps/classify/task.py``, ``apps/seq2seq/task.py``) and inference (``omnigpt.pipeline``, ``omnigpt
run``) build a model's input from the same card with the functions here, so a model is always prompted the way it
was trained. A card is a small JSON object:

* ``{"pipeline": "text-classification", "max_tokens": 256}`` — the text's tokens, cut, then the end token, whose
  last hidden state the ``score`` head reads (GPT-1's "extract" token); labels are ``config.extra["id2label"]``;
* ``{"pipeline": "summarization" | "translation", "format": "sep", "max_source_tokens": N, "max_new_tokens": M}``
  — a from-scratch model reads ``source <|sep|>`` and writes the target up to ``<|endoftext|>``;
* the same with ``"format": "chat", "instruction": "... {text} ..."`` — a chat model gets one user turn (the
  instruction around the source) through its chat template, and answers up to its end-of-turn token;
* translation cards also carry ``"src_lang"`` and ``"tgt_lang"`` (ISO 639-1: ``en``, ``es``).
"""

from __future__ import annotations

from typing import Any

SEP = "<|sep|>"
EOT = "<|endoftext|>"
PIPELINES = ("text-classification", "summarization", "translation", "text-generation")


def task_card(config: Any) -> dict[str, Any]:
    """The task card of a model config ({} for a plain language model)."""
    return dict((getattr(config, "extra", None) or {}).get("task") or {})


def cut(tokenizer: Any, text: str, max_tokens: int) -> list[int]:
    """The first ``max_tokens`` tokens of ``text`` (special-token strings stay plain text)."""
    return tokenizer.encode(text)[:max_tokens]


def source_messages(card: dict[str, Any], tokenizer: Any, source: str) -> list[dict[str, str]]:
    """Chat format: the one user turn for ``source`` (cut to the card's source budget)."""
    text = tokenizer.decode(cut(tokenizer, source, card["max_source_tokens"])).strip()
    return [{"role": "user", "content": card["instruction"].format(text=text)}]


def prompt_ids(card: dict[str, Any], tokenizer: Any, source: str, template: str | None = None) -> list[int]:
    """The ids a seq2seq model continues with its output for ``source``."""
    if card.get("format") == "sep":
        return cut(tokenizer, source, card["max_source_tokens"]) + [tokenizer.token_to_id(SEP)]
    if template is None:
        raise ValueError("a chat-format task card needs the model's chat template")
    from omnigpt.text.chat_template import ChatTemplate

    text = ChatTemplate(template).render(source_messages(card, tokenizer, source), True)
    return tokenizer.encode(text, allowed_special=True)


def classification_ids(card: dict[str, Any], tokenizer: Any, text: str) -> list[int]:
    """A classifier's input: the text's tokens, cut, then the end token (the position the head reads)."""
    return cut(tokenizer, text, card["max_tokens"] - 1) + [end_token_id(tokenizer)]


def end_token_id(tokenizer: Any) -> int:
    """``<|endoftext|>`` when the tokenizer has it, else its end-of-sequence token."""
    specials = getattr(tokenizer, "special_tokens", None) or {}
    if EOT in specials:
        return specials[EOT]
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("the tokenizer has neither <|endoftext|> nor an end-of-sequence token")
    return int(eos)


def stop_ids(card: dict[str, Any], tokenizer: Any) -> list[int]:
    """Where a seq2seq model's output ends: ``<|endoftext|>`` (sep format) or the chat model's end of turn (its
    end-of-sequence token, e.g. ``<|im_end|>``)."""
    if card.get("format") == "sep":
        return [tokenizer.token_to_id(EOT)]
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("a chat-format model needs a tokenizer with an end-of-turn (eos) token")
    return [int(eos)]


__all__ = ["EOT", "PIPELINES", "SEP", "classification_ids", "cut", "end_token_id", "prompt_ids", "source_messages",
           "stop_ids", "task_card"]
