"""Classification with a GPT: a trained ``score`` head (``predict``), or a chat model's closed-vocabulary answer
(``label_probs``, zero-shot).

``predict``: rows are sorted by length and right-padded in batches (no attention mask: causal attention never lets
a real token see the padding after it); the ``score`` head reads position ``length - 1``
(``GPTForSequenceClassification``'s ``sequence_lengths``). Shared by the ``classify`` task's evaluation and
``omnigpt.pipeline("text-classification")``.

``label_probs``: the model is asked the question and the candidate labels compete as its answer, the way
Whisper's voice-command scorer lets keywords compete as a transcript: p(label | prompt) = ∏ p(token | prompt, the
label's previous tokens), renormalised over the labels.
"""

from __future__ import annotations

import torch
from torch import Tensor

from omnigpt.models.gpt import GPT, GPTForSequenceClassification


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


@torch.no_grad()
def label_probs(model: GPT, prompt: list[int], labels: list[list[int]]) -> Tensor:
    """(K,) probabilities of the K ``labels`` (token ids each) as the continuation of ``prompt``.

    When the labels' first tokens all differ, the first token decides and one forward of the prompt suffices (its
    next-token distribution restricted to those K tokens); otherwise each label's summed log-probability over all
    its tokens is computed, one row per label (right-padded, causal: padding is never seen)."""
    if not labels or any(not ids for ids in labels):
        raise ValueError("label_probs needs at least one label, each of at least one token")
    dev = next(model.parameters()).device
    firsts = [ids[0] for ids in labels]
    if len(set(firsts)) == len(firsts):
        logits = model(torch.tensor([prompt], device=dev)).logits[0, -1].float()  # (V,)
        return logits.log_softmax(-1)[firsts].softmax(-1).cpu()
    rows = [prompt + ids for ids in labels]
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    logp = model(ids.to(dev)).logits.float().log_softmax(-1).cpu()  # (K, T, V)
    total = torch.stack([sum(logp[k, len(prompt) - 1 + j, t] for j, t in enumerate(label))
                         for k, label in enumerate(labels)])
    return total.softmax(-1)


__all__ = ["collate", "label_probs", "predict"]
