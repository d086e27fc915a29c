"""``pipeline("text-classification" | "sentiment-analysis" | "zero-shot-classification", model=...)``.

Three kinds of model label texts:

* a ``classify`` run: its task card says how a text becomes ids (the training format), its ``score`` head gives
  the probabilities and ``id2label`` names the classes;
* a chat model fine-tuned (``seq2seq`` on a ``*-answer`` set) to answer with a label: asked as in training, scored
  as zero-shot;
* a chat model, zero-shot (``qwen2.5-0.5b-instruct`` when no model is given): it is asked which label fits and the
  labels compete as its answer (``generate.classify.label_probs``). ``sentiment-analysis`` / ``text-classification``
  use the labels ``positive`` / ``negative`` unless ``labels=[...]`` is given; ``zero-shot-classification`` takes
  ``candidate_labels`` per call, as transformers' does.

Outputs have transformers' shapes: text classification gives ``{"label", "score"}`` per text (the best label;
``top_k=None``: every label, best first); zero-shot classification gives ``{"sequence", "labels", "scores"}``
(best first) per text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from omnigpt.apps.common.pipeline import MULTILINGUAL_CHAT_MODEL, TextPipeline
from omnigpt.generate.classify import ask_labels, predict
from omnigpt.text.task_card import classification_ids

SENTIMENT_LABELS = ("positive", "negative")
INSTRUCTION = "Which of these labels fits the text best: {labels}? Answer with the label only.\n\nText: {text}"


def zero_shot_card(labels: Sequence[str], instruction: str = INSTRUCTION, max_source_tokens: int = 512) -> dict:
    """The task card of a chat model asked to pick one of ``labels`` for a text (``{labels}`` and ``{text}`` in the
    instruction are filled in)."""
    labels = [str(x) for x in labels]
    if len(labels) < 2 or len(set(labels)) != len(labels) or not all(x.strip() for x in labels):
        raise ValueError(f"labels must be two or more different non-empty names, got {labels!r}")
    return {"pipeline": "text-classification", "format": "chat", "max_source_tokens": max_source_tokens,
            "labels": labels, "instruction": instruction.replace("{labels}", ", ".join(labels))}


class _ChatScoring(TextPipeline):
    """A chat model scoring closed-vocabulary answers."""

    default_model = MULTILINGUAL_CHAT_MODEL

    def label_probs(self, card: dict[str, Any], texts: list[str]) -> torch.Tensor:
        """(N, K) probabilities of the card's labels as the model's answer for each text."""
        if self.template is None:
            raise ValueError(f"model {self.name} has no chat template to ask it zero-shot; pass a classify run or a "
                             f"chat model")
        return ask_labels(self.model, self.tokenizer, self.template, card, texts)


class TextClassificationPipeline(_ChatScoring):
    task = "text-classification"
    always_list = True
    batch_size = 32

    def __init__(self, model: str | Path | None = None, device: str | None = None,
                 labels: Sequence[str] | None = None, **defaults: Any) -> None:
        super().__init__(model, device, **defaults)
        if self.card and labels is not None:
            raise ValueError(f"model {self.name} was trained with its own labels; labels= is for chat models")
        if self.card.get("format") == "chat":  # a chat model fine-tuned to answer with a label (seq2seq, *-answer)
            self.labels = self.card["labels"]
        elif self.card:  # a classify run
            id2label = self.model.config.extra.get("id2label")
            if not id2label or not hasattr(self.model, "score"):
                raise ValueError(f"model {self.name} is not a text classifier (no labels or no score head); train "
                                 f"one with the classify task")
            self.labels = [id2label[str(i)] for i in range(len(id2label))]
        else:  # a chat model, zero-shot
            if self.template is None:
                raise ValueError(f"model {self.name} is not a text classifier: not a classify run, and no chat "
                                 f"template to ask it zero-shot")
            self.card = zero_shot_card(labels or SENTIMENT_LABELS)
            self.labels = self.card["labels"]

    def options(self, top_k: int | None = 1) -> dict[str, Any]:
        return {"top_k": top_k}

    def forward(self, batch: list[str], **options: Any) -> torch.Tensor:
        if self.card.get("format") == "chat":
            return self.label_probs(self.card, batch)  # (N, K)
        return predict(self.model, [classification_ids(self.card, self.tokenizer, t) for t in batch])  # (N, K)

    def postprocess(self, probs: torch.Tensor, batch: list[str], top_k: int | None) -> list[Any]:
        out = []
        for p in probs:
            best = [{"label": self.labels[int(i)], "score": float(p[i])} for i in p.argsort(descending=True)]
            out.append(best[0] if top_k == 1 else best[: top_k or None])
        return out


class ZeroShotClassificationPipeline(_ChatScoring):
    task = "zero-shot-classification"
    batch_size = 32

    def options(self, candidate_labels: Sequence[str] | str | None = None, multi_label: bool = False) -> dict[str, Any]:
        if multi_label:
            raise ValueError("multi_label=True is not supported: the labels compete as one answer of the chat model")
        if isinstance(candidate_labels, str):  # transformers accepts "a, b, c"
            candidate_labels = [x.strip() for x in candidate_labels.split(",")]
        if candidate_labels is None:
            return {"candidate_labels": None}
        return {"candidate_labels": zero_shot_card(candidate_labels)["labels"]}

    def forward(self, batch: list[str], candidate_labels: list[str] | None, **options: Any) -> torch.Tensor:
        if candidate_labels is None:
            raise ValueError("zero-shot-classification needs candidate_labels=[...]")
        return self.label_probs(zero_shot_card(candidate_labels), batch)  # (N, K)

    def postprocess(self, probs: torch.Tensor, batch: list[str], candidate_labels: list[str],
                    **options: Any) -> list[dict[str, Any]]:
        out = []
        for text, p in zip(batch, probs, strict=True):
            order = p.argsort(descending=True).tolist()
            out.append({"sequence": text, "labels": [candidate_labels[i] for i in order],
                        "scores": [float(p[i]) for i in order]})
        return out


__all__ = ["SENTIMENT_LABELS", "TextClassificationPipeline", "ZeroShotClassificationPipeline", "zero_shot_card"]
