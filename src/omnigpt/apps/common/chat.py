"""Chat examples for supervised fine-tuning (sft, and seq2seq's prompted pretrained models): a conversation rendered
through the chat template into ids with assistant-only labels, right-padded batches, and the loss on those labels
(the fused LM-head cross-entropy, so no (B, T, V) logits exist)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from omnigpt.kernels.losses import fused_linear_cross_entropy
from omnigpt.models.gpt import GPT
from omnigpt.models.lora import LoRAWeights, lora_parameters
from omnigpt.train.schedule import module_groups


@dataclass
class Example:
    input_ids: Tensor  # (T,) the whole rendered conversation
    labels: Tensor  # (T,) the same ids on assistant tokens, -100 elsewhere (not shifted: the loss shifts)
    prompt: list[int]  # the conversation up to the last assistant turn + the generation prompt
    question: str  # the user turn before the last assistant turn
    answer: str  # the last assistant turn's text


def encode_conversation(tokenizer: Any, render: Callable[[list[dict[str, Any]], bool], str],
                        messages: list[dict[str, Any]], eos_id: int,
                        max_len: int) -> Example | None:
    """Ids and assistant-only labels of one conversation; None when nothing trainable survives ``max_len``.

    Each assistant turn's span is the text its turn adds to the rendering of the conversation so far with the
    generation prompt; its tokens up to and including the first ``eos_id`` are labelled."""
    ids: list[int] = []
    labels: list[int] = []
    done = ""
    prompt: list[int] = []

    def add(text: str, train: bool) -> list[int]:
        piece = tokenizer.encode(text, allowed_special=True)
        if train:
            end = piece.index(eos_id) + 1 if eos_id in piece else len(piece)
            lab = piece[:end] + [-100] * (len(piece) - end)
        else:
            lab = [-100] * len(piece)
        ids.extend(piece)
        labels.extend(lab)
        return piece

    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, after = render(messages[:i], True), render(messages[: i + 1], False)
        if not before.startswith(done) or not after.startswith(before):
            raise ValueError("the chat template does not render conversations prefix-consistently (a turn changes "
                             "the text before it), so assistant tokens cannot be located")
        add(before[len(done) :], False)
        prompt = list(ids)
        add(after[len(before) :], True)
        done = after
    add(render(messages, False)[len(done) :], False)
    ids, labels = ids[:max_len], labels[:max_len]
    if all(x == -100 for x in labels[1:]):  # the loss predicts labels[1:]
        return None
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    question = next((m["content"] for m in reversed(messages[:last]) if m["role"] == "user"), "")
    return Example(torch.tensor(ids), torch.tensor(labels), prompt, question, messages[last]["content"])


def collate(examples: list[Example], pad_id: int) -> dict[str, Tensor]:
    """Right-padded (B, T) ids and labels. No attention mask: padding sits after every real token, so causal
    attention never lets a real position see it, and its labels are -100."""
    T = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        ids[i, : len(e.input_ids)], labels[i, : len(e.labels)] = e.input_ids, e.labels
    return {"input_ids": ids, "labels": labels}


class SFTLoss(nn.Module):
    """The model + the fused LM-head cross-entropy on labelled (assistant) tokens. With LoRA, ``lora`` holds the
    adapted layers' raw tensors (the same Parameters as the model's) and is the one trained module."""

    def __init__(self, model: GPT, lora: LoRAWeights | None = None) -> None:
        super().__init__()
        self.model = model
        self.lora = lora

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        if self.lora is not None:
            return {"lora": lora_parameters(self.model)}  # the frozen base is in no group: never in AdamW
        return module_groups(self.model)

    def forward(self, input_ids: Tensor, labels: Tensor) -> Tensor:
        h = self.model.transformer(input_ids).last_hidden_state  # (B, T, C)
        # position t predicts labels[t + 1] (HF's shift), without (B, T, V) logits in memory
        return fused_linear_cross_entropy(h[:, :-1], self.model.lm_head.weight, labels[:, 1:])


@torch.no_grad()
def target_loss(model: GPT, examples: list[Example], pad: int, batch_size: int = 16) -> tuple[float, int]:
    """(mean loss per labelled token, labelled tokens) of ``examples``, 16 at a time, weighted by token."""
    dev = model.lm_head.weight.device
    total, n = 0.0, 0
    for i in range(0, len(examples), batch_size):
        b = collate(examples[i : i + batch_size], pad)
        ids, labels = b["input_ids"].to(dev), b["labels"].to(dev)
        h = model.transformer(ids).last_hidden_state
        k = int((labels[:, 1:] != -100).sum())
        total += float(fused_linear_cross_entropy(h[:, :-1], model.lm_head.weight, labels[:, 1:])) * k
        n += k
    return total / max(n, 1), n
