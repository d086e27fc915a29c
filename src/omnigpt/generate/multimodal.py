"""Answers of a ``MultimodalGPT``: the fused prompt (text + image/audio vectors) decoded through the same KV-cache
iterator as text (``generate.decode.generate`` with ``inputs_embeds``)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from omnigpt.data.formats import conversation_prompt
from omnigpt.generate.decode import generate
from omnigpt.text.processors import AUDIO_TOKEN, IMAGE_TOKEN


@torch.no_grad()
def generate_answers(model: Any, processor: Any, batch: dict[str, Tensor], max_new_tokens: int = 24,
                     temperature: float = 0.0, top_k: int | None = None, seed: int | None = None) -> list[str]:
    """Continuations of one processor batch (prompts left-padded when their lengths differ), stopping at eos;
    greedy by default."""
    model.eval()
    eos = processor.ids.get(processor.config.eos_token) if processor.config.eos_token else None
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    embeds = model.embed(batch["input_ids"], batch.get("pixel_values"), batch.get("input_features"))
    tokens: list[list[int]] = [[] for _ in range(len(batch["input_ids"]))]
    # Placeholder ids past a pretrained decoder's vocabulary (a llava run's) are already replaced in ``embeds``; the
    # ids go on only for the repetition penalty, so they are clamped into the vocabulary.
    ids = batch["input_ids"].clamp(max=model.config.text.vocab_size - 1)
    for step in generate(model.language_model, ids, inputs_embeds=embeds,
                         attention_mask=batch["attention_mask"], max_new_tokens=max_new_tokens,
                         temperature=temperature, top_k=top_k, seed=seed,
                         stop_token_ids=[eos] if eos is not None else ()):
        for j, tok in enumerate(step.tokens):
            if tok is not None and tok != eos:
                tokens[j].append(tok)
    return [processor.tokenizer.decode(t) for t in tokens]


def chat_prompt(question: str, n_images: int = 0, n_clips: int = 0) -> str:
    """The prompt a multimodal model was trained on (``data.formats.conversation_prompt``) for one user turn; the
    placeholders go first, one per image and per clip, unless ``question`` already places them."""
    if IMAGE_TOKEN not in question and AUDIO_TOKEN not in question:
        question = "".join([IMAGE_TOKEN] * n_images + [AUDIO_TOKEN] * n_clips) + ("\n" if n_images + n_clips else "") \
            + question
    turns = [{"from": "human", "value": question}, {"from": "gpt", "value": ""}]
    return conversation_prompt({"conversations": turns})[0]


def answer(model: Any, processor: Any, question: str, images: list[Any] | None = None,
           audio: list[Any] | None = None, **controls: Any) -> str:
    """One answer about ``images`` (paths, PIL images or arrays) and ``audio`` clips (paths or waveforms)."""
    images, audio = list(images or []), list(audio or [])
    batch = processor(chat_prompt(question, len(images), len(audio)), images=images, audio=audio)
    return generate_answers(model, processor, batch, **controls)[0]


__all__ = ["answer", "chat_prompt", "generate_answers"]
