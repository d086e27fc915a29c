"""LLaVA-style conversations for a pretrained chat decoder: the caption mix, and the training prompt in the
processor's format (``text.chat_processor.ChatProcessor``: the decoder's own chat template, LLaVA-1.5's way).

The caption mix (``caption_conversations``): every prepared image directory's caption records (``{split}.jsonl``:
emoji CLDR names, Open Clip Art titles, "a photo of a sneaker") asked with one question ("What is in this
picture?"), beside the directory's own questions (``{split}.llava.json``: the emoji's name, the clip art's
keywords, the Fashion-MNIST class).
"""

from __future__ import annotations

from typing import Any

from omnigpt.data import multimodal as mm

CAPTION_QUESTION = "What is in this picture?"






def caption_conversation(record: dict[str, Any], question: str = CAPTION_QUESTION) -> dict[str, Any]:
    """A caption record (absolute ``image`` path) → the conversation "<|image|>\\n{question}" → its caption."""
    conv = mm.caption_to_conversation({"id": record["id"], "image": record["image"],
                                       "text": record["text"].rstrip(".")}, question)
    return {**conv, "images": [record["image"]], "audio": []}


def caption_conversations(source: Any, training: bool, question: str = CAPTION_QUESTION,
                          with_questions: bool = True) -> list[dict[str, Any]]:
    """One source's caption conversations (+ its own questions when ``with_questions``), held-out items handled as
    ``data.batches.read_source`` does."""
    from omnigpt.data.batches import read_source

    captions = [caption_conversation(r, question) for r in read_source(source, True, training)]
    return captions + (read_source(source, False, training) if with_questions else [])


__all__ = ["CAPTION_QUESTION", "caption_conversation", "caption_conversations"]
