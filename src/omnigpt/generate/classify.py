"""Batched inference of a GPT sequence classifier over token rows of different lengths.

Rows are sorted by length and right-padded in batches (no attention mask: causal attention never lets a real token
see the padding after it); the ``score`` head reads position ``length - 1`` (``GPTForSequenceClassification``'s
``sequence_lengths``). Shared by the ``classify`` task's evaluation and ``omnigpt.pipeline("text-classification")``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from omnigpt.models.gpt import GPTForSequenceClassification


def collate(rows: list[Tensor], labels: list[int], pad: int) -> dict[str, Tensor]:
    """Right-padded (B, T) ids, their lengths and labels."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return {"input_ids": ids, "sequence_lengths": torch.tensor([len(r) for r in rows]),
            "labels": torch.tensor(labels, dtype=torch.long)}


@torch.no_grad()
def predict(model: GPTForSequenceClassification, rows: list[list[int]], pad: int = 0,
            batch_size: int = 32) -> Tensor:
    """Class probabilities (N, K) of token rows (``text.task_card.classification_ids``)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    probs = torch.empty(len(rows), model.config.num_labels)
    dev = model.score.weight.device
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        b = collate([torch.tensor(rows[j]) for j in idx], [0] * len(idx), pad)
        logits = model(b["input_ids"].to(dev), sequence_lengths=b["sequence_lengths"]).logits
        probs[idx] = logits.float().softmax(-1).cpu()
    return probs


__all__ = ["collate", "predict"]
