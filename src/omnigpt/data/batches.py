"""Multimodal batches: prepared directories → preprocessed examples → padded batches, as pure functions.

* ``read_source`` reads one prepared directory (``omnigpt prepare-mm``: LLaVA-style ``{split}.llava.json``
  conversations, or ``{split}.jsonl`` captions) with its hold-out and limit;
* ``to_example`` runs the processor once per conversation (answer-only labels, the media tensors);
* ``collate`` pads examples into a batch (right for training, left for generation);
* ``mixture_indices`` draws the (source, item) of every row of batch ``step`` by source weight — a pure function of
  (seed, step), so runs and resumes see the same batches;
* ``tokenize_texts``, ``class_balanced_batch``, ``spec_augment``: captions, CLIP batches, log-mel augmentation.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from omnigpt.data import multimodal as mm
from omnigpt.text.chat_processor import ChatProcessor
from omnigpt.text.tokenizer import CharTokenizer


def read_source(source: Any, captions: bool, training: bool) -> list[dict[str, Any]]:
    """The items of one source: conversations (or caption records), without the held-out ones when training and
    only those when evaluating with ``holdout`` > 0; then the first ``limit``."""
    d = Path(source.dir)
    path = d / (f"{source.split}.jsonl" if captions else f"{source.split}.llava.json")
    if not path.is_file():
        have = sorted(p.name for p in d.glob("*.json*")) if d.is_dir() else []
        raise FileNotFoundError(f"{path} not found (run `omnigpt prepare-mm` into {d}, or choose another split; "
                                f"the directory holds {have or 'nothing'})")
    items = mm.read_captions(path) if captions else mm.read_conversations(path)
    if source.holdout > 0:
        items = [it for it in items if mm.held_out(str(it["id"]), source.holdout) != training]
    items = items[: source.limit]
    if not items:
        raise ValueError(f"{path}: no items left (holdout {source.holdout}, limit {source.limit})")
    return items


def char_tokenizer(texts: Sequence[str]) -> Any:
    """Printable ASCII (newline included) + any other character of ``texts`` + ``<|endoftext|>``: free-text
    prompts encode, and the vocabulary is a few hundred ids at most, right for small decoders trained here."""
    chars = set(string.printable) - set("\t\r\x0b\x0c")
    chars.update(*texts)
    return CharTokenizer(sorted(chars), ["<|endoftext|>"])


@dataclass(frozen=True)
class Example:
    """One preprocessed conversation: prompt (+ answer) ids, answer-only labels, its media in placeholder order."""

    input_ids: Tensor  # (T,)
    labels: Tensor  # (T,): -100 on the prompt and placeholders
    pixel_values: Tensor | None  # (n_images, C, H, W)
    input_features: Tensor | None  # (n_clips, n_mels, frames)
    answer: str


def to_example(conv: dict[str, Any], processor: Any, with_answer: bool) -> Example:
    """Run the processor on one conversation; its last turn is the answer. The prompt is in the processor's format:
    a ``ChatProcessor`` renders the decoder's chat template (LLaVA-1.5), a plain processor writes "User: …
    Assistant: " (``mm.conversation_prompt``); the answer gets the processor's eos."""
    chat = isinstance(processor, ChatProcessor)
    prompt, answer = processor.conversation_prompt(conv) if chat else mm.conversation_prompt(conv)
    b = processor(prompt, images=conv["images"], audio=conv["audio"], answers=answer if with_answer else None)
    labels = b["labels"][0] if with_answer else torch.full_like(b["input_ids"][0], -100)
    return Example(b["input_ids"][0], labels, b.get("pixel_values"), b.get("input_features"), answer)


def collate(examples: Sequence[Example], pad_id: int, left: bool = False) -> dict[str, Tensor]:
    """Pad a list of examples into one batch (right for training, left for generation); media concatenated in
    row order, which is the order ``MultimodalGPT`` fills the placeholders in."""
    T = max(len(e.input_ids) for e in examples)
    B = len(examples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        sl = slice(T - len(e.input_ids), T) if left else slice(0, len(e.input_ids))
        ids[i, sl], mask[i, sl], labels[i, sl] = e.input_ids, 1, e.labels
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    for key in ("pixel_values", "input_features"):
        media = [getattr(e, key) for e in examples if getattr(e, key) is not None]
        if media:
            out[key] = torch.cat(media)  # (N, ...) over the batch's rows
    return out


def mixture_indices(sizes: Sequence[int], weights: Sequence[float], batch_size: int, seed: int, step: int,
                    ) -> list[tuple[int, int]]:
    """(source, item) of each row of batch ``step``: the source drawn by weight, the item uniformly — a pure
    function of (seed, step), so a rerun sees the same batches."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    src = torch.multinomial(torch.tensor(weights, dtype=torch.float64), batch_size, replacement=True, generator=g)
    item = (torch.rand(batch_size, generator=g, dtype=torch.float64) * torch.tensor(sizes)[src]).long()
    return list(zip(src.tolist(), item.tolist(), strict=True))


def class_balanced_batch(labels: Tensor, classes_per_batch: int, per_class: int, generator: torch.Generator,
                         ) -> Tensor:
    """Indices of a batch with ``per_class`` items from each of ``classes_per_batch`` random classes.

    CLIP on class-labelled data stalls on duplicate-class "negatives"; with balanced batches and multi-positive
    targets (``clip_loss(group_ids=…)``) every batch holds the same, known structure."""
    classes = labels.unique()
    chosen = classes[torch.randperm(len(classes), generator=generator)[:classes_per_batch]]
    out = []
    for c in chosen:
        idx = (labels == c).nonzero().flatten()
        out.append(idx[torch.randint(len(idx), (per_class,), generator=generator)])
    return torch.cat(out)


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_length: int, eos_id: int | None = None,
                   ) -> tuple[Tensor, Tensor]:
    """Right-padded (ids, attention_mask) of plain texts, each cut to ``max_length`` (eos appended if given)."""
    rows = [(tokenizer.encode(t) + ([eos_id] if eos_id is not None else []))[:max_length] for t in texts]
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def spec_augment(features: Tensor, generator: torch.Generator, freq_masks: int = 2, freq_width: int = 8,
                 time_masks: int = 2, time_width: int = 10, gain: float = 0.25) -> Tensor:
    """SpecAugment (Park et al. 2019) on log-mel batches (N, n_mels, T): random frequency and time bands set to
    each clip's mean, plus a random level shift (log10 units / 4, as the Whisper scaling has it)."""
    x = features.clone()
    N, M, T = x.shape
    fill = x.mean(dim=(1, 2), keepdim=True)
    for _ in range(freq_masks):
        w = torch.randint(0, freq_width + 1, (N, 1, 1), generator=generator)
        f0 = (torch.rand(N, 1, 1, generator=generator) * (M - w)).long()
        band = (torch.arange(M)[None, :, None] >= f0) & (torch.arange(M)[None, :, None] < f0 + w)
        x = torch.where(band, fill, x)
    for _ in range(time_masks):
        w = torch.randint(0, time_width + 1, (N, 1, 1), generator=generator)
        t0 = (torch.rand(N, 1, 1, generator=generator) * (T - w)).long()
        band = (torch.arange(T)[None, None, :] >= t0) & (torch.arange(T)[None, None, :] < t0 + w)
        x = torch.where(band, fill, x)
    return x + (torch.rand(N, 1, 1, generator=generator) - 0.5) * 2 * gain


__all__ = ["Example", "char_tokenizer", "class_balanced_batch", "collate", "mixture_indices", "read_source",
           "spec_augment", "to_example", "tokenize_texts"]
