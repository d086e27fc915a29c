"""The ``seq2seq`` task: summarization and translation as next-token prediction in one sequence.

Two prompt formats (``text/task_card.py``), one loss:

* from scratch (``model.config``) — ``source <|sep|> target <|endoftext|>`` with a tokenizer trained on the train
  split (both sides); GPT-2's "TL;DR:" and translation prompts, made explicit with a separator token;
* from a chat model (``model.init_from: smollm2-135m-instruct``, with or without ``lora``) — one user turn (an
  instruction around the source, ``data.instruction``) and the target as the assistant's answer, rendered with the
  model's own chat template (``sft.encode_conversation``).

The loss is on the target tokens and the token that ends them only (labels -100 elsewhere), through the fused
LM-head cross-entropy (``sft.SFTLoss``). Data: ``data/textsets.py`` pairs (``summarize-bbc``, ``summarize-wiki``,
``translate-en-es``, ``translate-es-en``), split by a hash of each pair's group (a whole Bible book, a whole
article). Evaluation: val loss during training; greedy outputs on ``data.generate`` val pairs at the end;
``evaluate_run`` (``omnigpt eval RUN``) generates for test pairs and scores them with rouge-score (summaries:
``rouge1/2/L``) or sacreBLEU (translations: ``bleu_sacrebleu``, ``chrf``), beside the baselines of
``apps/common/baselines.py`` on the same pairs and, for a model fine-tuned from a chat model, that model's
zero-shot output with the same prompt. On a ``*-answer`` set (a classification set as text → label name) the run is
a ``text-classification`` model, scored by ``answer_accuracy`` (the labels compete as its answer).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from omnigpt.apps.common.chat import Example, SFTLoss, collate, encode_conversation, target_loss
from omnigpt.apps.common.text_model import (
    AppModelSpec,
    check_model_spec,
    load_base,
    tokenizer_dir,
    train_tokenizer,
    with_card,
)
from omnigpt.kernels.precision import autocast
from omnigpt.models.gpt import GPT
from omnigpt.text.task_card import EOT, SEP, cut, prompt_ids, source_messages, stop_ids, task_card
from omnigpt.train.recipe import RecipeError
from omnigpt.train.task import EpochOrder, Task, check_stage_modules

INSTRUCTIONS = {  # chat format: the user turn around the source (data.instruction overrides)
    "summarize-bbc": "Write the headline of this news article.\n\n{text}",
    "summarize-wiki": "Describe the subject of this Wikipedia text in a few words.\n\n{text}",
    "translate-en-es": "Translate this English text to Spanish.\n\n{text}",
    "translate-es-en": "Translate this Spanish text to English.\n\n{text}",
    # a classification set answered by the label's name ({labels}: the set's labels): the zero-shot prompt of
    # benchmarks/zero_shot.py, so a fine-tuned model and the base model zero-shot are asked the same question
    "sentiment-zh-answer": "Is the sentiment of this product review positive or negative? Answer with one of: "
                           "{labels}.\n\nText: {text}",
    "topic-bbc-answer": "Which section of a news site is this article from? Answer with one of: {labels}.\n\n"
                        "Text: {text}",
}


@dataclass
class Seq2SeqDataSpec:
    """A text-pair set of ``data/textsets.py`` and how pairs become one sequence."""

    dataset: str = "translate-en-es"  # summarize-bbc | summarize-wiki | translate-en-es | translate-es-en
    tokenizer: str = "bpe:8000"  # from scratch: trained on the train split's sources and targets
    max_source_tokens: int = 128  # longer sources keep their beginning
    max_target_tokens: int = 64
    instruction: str | None = None  # chat format: the user turn, with {text} for the source (default per dataset)
    max_new_tokens: int = 64  # generation budget at evaluation
    generate: int = 64  # val pairs generated at the end of training (0: none)
    limit: int | None = None  # the first N training pairs (quick runs, tests)


def pick(items: list[Any], n: int | None) -> list[Any]:
    """``n`` items spread evenly over ``items`` (all when None): a held-out sample that covers every group."""
    if n is None or n >= len(items):
        return list(items)
    return [items[i * len(items) // n] for i in range(n)]


def sep_example(tok: Any, card: dict[str, Any], source: str, target: str) -> Example:
    """``source <|sep|> target <|endoftext|>``; labels on the target and the end token."""
    prompt = prompt_ids(card, tok, source)
    tgt = cut(tok, target, card["max_target_tokens"]) + [tok.token_to_id(EOT)]
    ids = prompt + tgt
    return Example(torch.tensor(ids), torch.tensor([-100] * len(prompt) + tgt), prompt, source, target)


def purpose_card(dataset: str) -> dict[str, Any]:
    """What a model trained on ``dataset`` is for: its pipeline, and its languages or labels."""
    if dataset.endswith("-answer"):
        from omnigpt.data.textsets import load_classification

        return {"pipeline": "text-classification",
                "labels": list(load_classification(dataset.removesuffix("-answer"))[0])}
    if dataset.startswith("translate-"):
        src, tgt = dataset.removeprefix("translate-").split("-")
        return {"pipeline": "translation", "src_lang": src, "tgt_lang": tgt}
    return {"pipeline": "summarization"}


def generate_outputs(model: GPT, tok: Any, card: dict[str, Any], sources: list[str], template: str | None = None,
                     max_new_tokens: int | None = None) -> list[str]:
    """Greedy outputs of a seq2seq model (or a chat model prompted by ``card``) for ``sources``."""
    from omnigpt.generate.decode import greedy_ids

    prompts = [prompt_ids(card, tok, s, template) for s in sources]
    got = greedy_ids(model, prompts, max_new_tokens=max_new_tokens or card["max_new_tokens"],
                     stop_token_ids=stop_ids(card, tok))
    return [tok.decode(g, skip_special_tokens=True).strip() for g in got]


def score(dataset: str, outputs: list[str], references: list[str]) -> dict[str, float]:
    from omnigpt.apps.common import metrics

    if dataset.startswith("summarize-"):
        return metrics.rouge_scores(outputs, references)
    if dataset.endswith("-answer"):
        return {"exact_match": metrics.exact_match(outputs, references)}
    return metrics.translation_scores(outputs, references)


class Seq2SeqTask(Task):
    name = "seq2seq"
    data_spec, model_spec = Seq2SeqDataSpec, AppModelSpec

    @classmethod
    def check_recipe(cls, r: Any) -> None:
        from omnigpt.data.textsets import PAIR_SETS

        d = r.data
        if d.dataset not in PAIR_SETS:
            raise RecipeError(f"data.dataset: unknown {d.dataset!r}; text-pair sets: {', '.join(PAIR_SETS)}")
        for key in ("max_source_tokens", "max_target_tokens", "max_new_tokens"):
            if getattr(d, key) <= 0:
                raise RecipeError(f"data.{key}: must be positive, got {getattr(d, key)}")
        if d.instruction is not None and "{text}" not in d.instruction:
            raise RecipeError("data.instruction: must contain {text} (where the source goes)")
        check_model_spec(r)
        check_stage_modules(r, ["lora"] if r.model.lora is not None else ["transformer"])

    @classmethod
    def prepare(cls, r: Any) -> None:
        from omnigpt.data.textsets import load_pairs, split_items

        pairs = split_items(load_pairs(r.data.dataset), "train")
        if r.model.config is not None:
            texts = [p.source for p in pairs] + [p.target for p in pairs]
            train_tokenizer(r.data.tokenizer, texts, tokenizer_dir(r), [EOT, SEP])

    def __init__(self, r: Any) -> None:
        super().__init__(r)
        from omnigpt.data.textsets import load_pairs, split_items

        d = r.data
        base, tok, template = load_base(r, [EOT, SEP] if r.model.config is not None else [])
        self.format = "sep" if template is None else "chat"
        card = {**purpose_card(d.dataset), "dataset": d.dataset, "format": self.format,
                "max_source_tokens": d.max_source_tokens, "max_target_tokens": d.max_target_tokens,
                "max_new_tokens": d.max_new_tokens}
        if self.format == "chat":
            instruction = d.instruction or INSTRUCTIONS[d.dataset]
            card |= {"instruction": instruction.replace("{labels}", ", ".join(card.get("labels", []))),
                     "base": r.model.init_from}
        with_card(base, card)
        self.model, self.preprocessor, self.tokenizer, self.template = base, tok, tok, template
        self.config, self.card = base.config, card
        self.eos = stop_ids(card, tok)[0]
        self.pad = int(getattr(tok, "pad_token_id", None) or self.eos)
        self.with_lora(self.model, r.model.lora)
        pairs = load_pairs(d.dataset)
        self.train_set = [self.example(p.source, p.target) for p in split_items(pairs, "train")[: d.limit]]
        self.val_pairs = pick(split_items(pairs, "val"), 256)
        self.val_set = [self.example(p.source, p.target) for p in self.val_pairs]
        longest = max(len(e.input_ids) for e in self.train_set)
        if longest > self.config.block_size:
            raise ValueError(f"data.max_source_tokens + max_target_tokens give sequences of {longest} tokens, more "
                             f"than the model's context ({self.config.block_size})")
        self.tokens_per_step = round(r.batch_size * sum(len(e.input_ids) for e in self.train_set)
                                     / len(self.train_set))
        self.order = EpochOrder(len(self.train_set), r.seed)

    def example(self, source: str, target: str) -> Example:
        if self.format == "sep":
            return sep_example(self.tokenizer, self.card, source, target)
        from omnigpt.text.chat_template import ChatTemplate

        messages = [*source_messages(self.card, self.tokenizer, source),
                    {"role": "assistant", "content": self.tokenizer.decode(
                        cut(self.tokenizer, target, self.card["max_target_tokens"])).strip()}]
        ex = encode_conversation(self.tokenizer, ChatTemplate(self.template).render, messages, self.eos, 1 << 20)
        assert ex is not None  # the target is never empty (textsets drops empty pairs)
        return ex

    def train_module(self) -> nn.Module:
        return SFTLoss(self.model, self.lora)

    def batch(self, step: int, start: int, count: int) -> dict[str, Tensor]:
        rows = self.order.rows(step, start, count, self.r.batch_size)
        return collate([self.train_set[i] for i in rows], self.pad)

    @torch.no_grad()
    def evaluate(self, limit: int | None, dtype: torch.dtype | None, loss_module: nn.Module | None,
                 ) -> dict[str, Any]:
        """Target-token loss on the first ``limit`` val pairs (all when None); at the end also greedy outputs for
        ``data.generate`` val pairs, scored."""
        loss, n = target_loss(self.model, self.val_set[:limit], self.pad)
        out: dict[str, Any] = {"val_loss": loss, "val_tokens": n}
        if limit is None and self.r.data.generate:
            pairs = pick(self.val_pairs, self.r.data.generate)
            outputs = generate_outputs(self.model, self.tokenizer, self.card, [p.source for p in pairs],
                                       self.template)
            out |= {f"val_{k}": v for k, v in score(self.r.data.dataset, outputs, [p.target for p in pairs]).items()}
        return out

    @classmethod
    def evaluate_run(cls, checkpoint: Path, out: Path, limit: int | None = None) -> dict[str, Any]:
        """Greedy outputs for ``limit`` test pairs (default 300, spread over the split), their scores, the baselines
        on the same pairs, the base chat model zero-shot (chat format), and ``samples.md``. Generation runs under
        autocast to the hardware's dtype, as the trainer's evaluations do (fp32 master weights)."""
        from omnigpt.apps.common import baselines, figures
        from omnigpt.checkpoints.registry import load
        from omnigpt.data.textsets import load_pairs, split_items

        model, tok, template = load(checkpoint)[:3]
        card = task_card(model.config)
        if card.get("pipeline") == "text-classification" and card.get("format") == "chat":
            return answer_accuracy(model, tok, template, card, out, limit)
        if card.get("pipeline") not in ("summarization", "translation"):
            raise ValueError(f"{checkpoint}: not a summarization or translation model (task card {card})")
        dataset = card["dataset"]
        pairs = pick(split_items(load_pairs(dataset), "test"), 300 if limit is None else limit)
        sources, refs = [p.source for p in pairs], [p.target for p in pairs]
        t0 = time.perf_counter()
        with autocast():
            outputs = generate_outputs(model, tok, card, sources, template)
        result: dict[str, Any] = {"dataset": dataset, "split": "test", "items": len(pairs),
                                  **score(dataset, outputs, refs), "seconds": round(time.perf_counter() - t0, 1)}
        result["baselines"] = baselines.pair_baselines(dataset, pairs=pairs)
        rows = [{"source": s[:300], "reference": r, "omnigpt": o} for s, r, o in zip(sources, refs, outputs,
                                                                                       strict=True)][:20]
        if card.get("format") == "chat" and card.get("base"):
            from omnigpt.checkpoints.registry import from_pretrained

            pre = from_pretrained(card["base"])
            t0 = time.perf_counter()
            with autocast():
                zero = generate_outputs(pre.model, tok, card, sources, template)
            result["baselines"][f"{card['base']}_zero_shot"] = {**score(dataset, zero, refs),
                                                                 "seconds": round(time.perf_counter() - t0, 1)}
            for row, z in zip(rows, zero, strict=False):
                row["zero-shot"] = z
        figures.sample_table(rows, out / "samples.md")
        return result


def answer_accuracy(model: GPT, tok: Any, template: str, card: dict[str, Any], out: Path, limit: int | None,
                    ) -> dict[str, Any]:
    """A chat model fine-tuned on a ``*-answer`` set, scored as a classifier on the first ``limit`` test items
    (the items ``classify``'s evaluation takes): the labels compete as its answer (``label_probs``), beside the
    classification baselines and the base model asked the same question zero-shot."""
    from omnigpt.apps.common import baselines, figures, metrics
    from omnigpt.checkpoints.registry import from_pretrained
    from omnigpt.data.textsets import load_classification, split_items
    from omnigpt.generate.classify import ask_labels

    classes = card["dataset"].removesuffix("-answer")  # the classification set the answers come from
    labels, items = load_classification(classes)
    test = split_items(items, "test")[:limit]

    def predictions(m: GPT) -> list[str]:
        with autocast():
            return [labels[int(i)] for i in ask_labels(m, tok, template, card, [x.text for x in test]).argmax(-1)]

    targets = [x.label for x in test]
    t0 = time.perf_counter()
    preds = predictions(model)
    result = {"dataset": card["dataset"], "split": "test", "items": len(test),
              **metrics.classification_scores(preds, targets, labels), "seconds": round(time.perf_counter() - t0, 1),
              "baselines": baselines.classification_baselines(classes, "test", limit)}
    figures.confusion_png(metrics.confusion(preds, targets, labels), labels, out / "confusion.png",
                          f"{card['dataset']} test, {len(test)} items\naccuracy {result['accuracy']:.3f}")
    if card.get("base"):
        zero = predictions(from_pretrained(card["base"]).model)
        result["baselines"][f"{card['base']}_zero_shot"] = metrics.classification_scores(zero, targets, labels)
    return result


__all__ = ["INSTRUCTIONS", "Seq2SeqDataSpec", "Seq2SeqTask", "answer_accuracy", "generate_outputs", "pick", "score",
           "sep_example"]
