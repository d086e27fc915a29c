"""Classification with a GPT: a trained ``score`` head (``predict``), or a chat model's closed-vocabulary answer
(``label_probs``, zero-shot).

``predict``: rows are sorted by length and right-padded in batches (no attention mask: causal attention never lets
a real token see the padding after it); the ``score`` head reads position ``length - 1``
(``GPTForSequenceClassification``'s ``sequence_lengths``). Shared by the ``classify`` task's evaluation and
``omnigpt.pipeline("text-classification")``.

``label_probs``: the model is asked the question and the candidate labels compete as its answer, the way
Whisper's voice-command scorer lets keywords compete as a transcript: p(label | prompt) = ∏ p(token | prompt, the
label's previous tokens), summed over the label's surface forms ("politics", " politics", "Politics" ...), and
renormalised over the labels.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from omnigpt.models.gpt import GPT, GPTForSequenceClassification
from omnigpt.models.kv_cache import make_kv_cache
from omnigpt.text.task_card import prompt_ids


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


def answer_forms(tokenizer: Any, label: str) -> list[list[int]]:
    """The token sequences a chat model may answer ``label`` with: as written, capitalised, each with and without
    a leading space (BPE spells " politics" and "politics" differently), deduplicated."""
    forms = dict.fromkeys(f"{space}{text}" for text in (label, label[:1].upper() + label[1:]) for space in ("", " "))
    seqs: list[list[int]] = []
    for form in forms:
        ids = tokenizer.encode(form)
        if ids and ids not in seqs:
            seqs.append(ids)
    return seqs


@torch.no_grad()
def label_probs(model: GPT, prompt: list[int], labels: list[list[list[int]]]) -> Tensor:
    """(K,) probabilities of the K ``labels`` as the continuation of ``prompt``; each label is one or more token
    sequences (its surface forms, ``answer_forms``), and p(label) = Σ_forms ∏_j p(token_j | prompt, tokens_<j),
    renormalised over the labels.

    The prompt runs once into a KV cache; the cache is copied to one row per form and every form's tokens after
    its first run in one right-padded batch (causal: a row never sees its padding)."""
    forms = [(k, ids) for k, seqs in enumerate(labels) for ids in seqs]
    if not labels or any(not seqs for seqs in labels) or any(not ids for _, ids in forms):
        raise ValueError("label_probs needs at least one label, each with at least one non-empty token sequence")
    dev = next(model.parameters()).device
    longest = max(len(ids) for _, ids in forms)
    caches = make_kv_cache(model.config, len(prompt) + longest)
    first = model(torch.tensor([prompt], device=dev), past_key_values=caches).logits[0, -1].float().log_softmax(-1)
    logp = torch.stack([first[ids[0]] for _, ids in forms]).cpu()  # (F,) log p(first token | prompt)
    if longest > 1:
        for cache in caches:
            cache.reorder(torch.zeros(len(forms), dtype=torch.long, device=dev))  # (1, ...) → (F, ...)
        rest = torch.zeros(len(forms), longest - 1, dtype=torch.long)
        for f, (_, ids) in enumerate(forms):
            rest[f, : len(ids) - 1] = torch.tensor(ids[:-1])
        cont = model(rest.to(dev), past_key_values=caches).logits.float().log_softmax(-1).cpu()  # (F, L-1, V)
        for f, (_, ids) in enumerate(forms):
            logp[f] += sum(cont[f, j - 1, t] for j, t in enumerate(ids) if j > 0)
    per_label = torch.full((len(labels),), float("-inf"))
    for f, (k, _) in enumerate(forms):
        per_label[k] = torch.logaddexp(per_label[k], logp[f])
    return per_label.softmax(-1)


def ask_labels(model: GPT, tokenizer: Any, template: str | None, card: dict[str, Any], texts: list[str]) -> Tensor:
    """(N, K) probabilities of ``card["labels"]`` as a chat model's answer for each text, asked as the chat-format
    ``card`` says (``prompt_ids``); each label's forms are encoded once."""
    forms = [answer_forms(tokenizer, label) for label in card["labels"]]
    return torch.stack([label_probs(model, prompt_ids(card, tokenizer, text, template), forms) for text in texts])


__all__ = ["answer_forms", "ask_labels", "collate", "label_probs", "predict"]
