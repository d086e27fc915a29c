"""``pipeline("summarization" | "translation_XX_to_YY", model=...)``: a ``seq2seq`` run, or a chat model prompted
zero-shot (``qwen2.5-0.5b-instruct`` by default: English, Chinese, Spanish).

A run's task card says how a source text is prompted (its training format) and how long the output may be; a chat
model without a card gets an instruction ("Summarize this text in one sentence.", "Translate this English text to
Spanish."). Greedy decoding. One text returns ``[{"summary_text"}]`` / ``[{"translation_text"}]``, a list of texts
one dict per text — transformers' shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omnigpt.apps.common.pipeline import MULTILINGUAL_CHAT_MODEL, TextPipeline
from omnigpt.generate.decode import greedy_ids
from omnigpt.text.task_card import prompt_ids, stop_ids

LANGUAGES = {"en": "English", "es": "Spanish", "fr": "French", "de": "German", "it": "Italian", "pt": "Portuguese",
             "zh": "Chinese", "ja": "Japanese", "ru": "Russian", "nl": "Dutch"}


class _Seq2SeqPipeline(TextPipeline):
    key = ""  # the output's field
    always_list = True
    default_model = MULTILINGUAL_CHAT_MODEL

    def zero_shot_card(self) -> dict[str, Any]:
        raise NotImplementedError

    def __init__(self, model: str | Path | None = None, device: str | None = None, **defaults: Any) -> None:
        super().__init__(model, device, **defaults)
        if not self.card:
            if self.template is None:
                raise ValueError(f"model {self.name} has neither a {self.task} task card nor a chat template to "
                                 f"prompt it zero-shot")
            self.card = self.zero_shot_card()

    def options(self, max_new_tokens: int | None = None) -> dict[str, Any]:
        return {"max_new_tokens": max_new_tokens}

    def forward(self, batch: list[str], max_new_tokens: int | None) -> list[list[int]]:
        prompts = [prompt_ids(self.card, self.tokenizer, t, self.template) for t in batch]
        return greedy_ids(self.model, prompts, max_new_tokens=max_new_tokens or self.card["max_new_tokens"],
                          stop_token_ids=stop_ids(self.card, self.tokenizer), batch_size=len(batch))

    def postprocess(self, ids: list[list[int]], batch: list[str], **options: Any) -> list[dict[str, str]]:
        return [{self.key: self.tokenizer.decode(g, skip_special_tokens=True).strip()} for g in ids]


class SummarizationPipeline(_Seq2SeqPipeline):
    task, key = "summarization", "summary_text"

    def zero_shot_card(self) -> dict[str, Any]:
        return {"pipeline": self.task, "format": "chat", "max_source_tokens": 768, "max_new_tokens": 64,
                "instruction": "Summarize this text in one sentence.\n\n{text}"}


class TranslationPipeline(_Seq2SeqPipeline):
    task, key = "translation", "translation_text"

    def __init__(self, model: str | Path | None = None, device: str | None = None, src_lang: str | None = None,
                 tgt_lang: str | None = None, **defaults: Any) -> None:
        for code in (src_lang, tgt_lang):
            if code is not None and code not in LANGUAGES:
                raise ValueError(f"unknown language code {code!r}; known: {', '.join(LANGUAGES)}")
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        super().__init__(model, device, **defaults)
        have = (self.card.get("src_lang"), self.card.get("tgt_lang"))
        want = (src_lang or have[0], tgt_lang or have[1])
        if have != want:
            raise ValueError(f"model {self.name} translates {have[0]} to {have[1]}, not {want[0]} to {want[1]}")

    def zero_shot_card(self) -> dict[str, Any]:
        if self.src_lang is None or self.tgt_lang is None:
            raise ValueError("zero-shot translation needs the languages: pipeline('translation_en_to_es', ...)")
        return {"pipeline": self.task, "format": "chat", "max_source_tokens": 512, "max_new_tokens": 128,
                "src_lang": self.src_lang, "tgt_lang": self.tgt_lang,
                "instruction": f"Translate this {LANGUAGES[self.src_lang]} text to {LANGUAGES[self.tgt_lang]}."
                               "\n\n{text}"}


__all__ = ["LANGUAGES", "SummarizationPipeline", "TranslationPipeline"]
