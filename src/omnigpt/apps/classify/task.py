"""The ``classify`` task: text classification with a GPT sequence classifier (sentiment, topic).

Model: ``GPTForSequenceClassification`` — the decoder reads the text's tokens and one end token; a linear ``score``
head reads the end token's last hidden state (GPT-1's "extract" token; HF's GPT2ForSequenceClassification reads
the last real token the same way). Batches are right-padded without an attention mask: causal attention never lets
a real token see the padding after it, and the head reads position ``length - 1``. The decoder comes from scratch,
from a language model the ``lm`` task pre-trained (GPT-1: pre-train, then fine-tune), or from a pretrained chat
model (SmolLM2), fully or with LoRA adapters; the head always trains (``apps/common/text_model.py``).

Data: ``data/textsets.py`` (``sentiment-zh``, ``topic-bbc``), split by a hash of each item's id: train here, val
for the periodic evaluation, test for ``omnigpt eval`` only. Row j of step s is a pure function of (seed, s).

Evaluation: val loss and accuracy during training; ``evaluate_run`` (``omnigpt eval RUN``): accuracy and macro-F1
on the test split (scikit-learn), the baselines of ``apps/common/baselines.py`` fitted on the same train split and
scored on the same test items, and a confusion-matrix PNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnigpt.apps.common.text_model import (
    AppModelSpec,
    check_model_spec,
    load_base,
    tokenizer_dir,
    train_tokenizer,
    with_card,
)
from omnigpt.generate.classify import collate, predict
from omnigpt.kernels.precision import autocast
from omnigpt.models.gpt import GPTForSequenceClassification
from omnigpt.models.lora import lora_parameters
from omnigpt.text.task_card import EOT, classification_ids, end_token_id, task_card
from omnigpt.train.recipe import RecipeError
from omnigpt.train.task import ClassifierLoss, EpochOrder, Task, check_stage_modules


@dataclass
class ClassifyDataSpec:
    """A labelled text set of ``data/textsets.py`` and how texts become tokens."""

    dataset: str = "sentiment-zh"  # sentiment-zh | topic-bbc
    tokenizer: str = "bpe:8000"  # from scratch: trained on the train split (bpe:VOCAB | char)
    max_tokens: int = 128  # per text, the end token included; longer texts keep their beginning
    limit: int | None = None  # the first N training items (quick runs, tests)


class ClassifyTask(Task):
    name = "classify"
    data_spec, model_spec = ClassifyDataSpec, AppModelSpec

    @classmethod
    def check_recipe(cls, r: Any) -> None:
        from omnigpt.data.textsets import CLASSIFICATION_SETS

        if r.data.dataset not in CLASSIFICATION_SETS:
            raise RecipeError(f"data.dataset: unknown {r.data.dataset!r}; classification sets: "
                              f"{', '.join(CLASSIFICATION_SETS)}")
        if r.data.max_tokens < 2:
            raise RecipeError(f"data.max_tokens: must be >= 2, got {r.data.max_tokens}")
        check_model_spec(r)
        check_stage_modules(r, ["lora", "score"] if r.model.lora is not None else ["transformer", "score"])

    @classmethod
    def prepare(cls, r: Any) -> None:
        from omnigpt.data.textsets import load_classification, split_items

        _, items = load_classification(r.data.dataset)
        if r.model.config is not None:
            train_tokenizer(r.data.tokenizer, [x.text for x in split_items(items, "train")], tokenizer_dir(r), [EOT])

    def __init__(self, r: Any) -> None:
        super().__init__(r)
        from omnigpt.data.textsets import load_classification, split_items

        self.labels, items = load_classification(r.data.dataset)
        base, tok, _ = load_base(r, [EOT])
        cfg = base.config.replace(num_labels=len(self.labels))
        if r.data.max_tokens > cfg.block_size:
            raise ValueError(f"data.max_tokens {r.data.max_tokens} exceeds the model's context ({cfg.block_size})")
        model = GPTForSequenceClassification(cfg)  # a fresh score head; the decoder's weights come from `base`
        model.transformer.load_state_dict(base.transformer.state_dict())
        card = {"pipeline": "text-classification", "dataset": r.data.dataset, "max_tokens": r.data.max_tokens}
        with_card(model, card, id2label={str(i): name for i, name in enumerate(self.labels)})
        self.model, self.preprocessor, self.tokenizer = model.train(), tok, tok
        self.config = model.config
        self.with_lora(model.transformer, r.model.lora, "transformer.")  # the score head trains in full
        self.pad = end_token_id(tok)  # any id would do: padding sits after the position the head reads
        index = {name: i for i, name in enumerate(self.labels)}

        def encode(split: str) -> tuple[list[list[int]], list[int]]:
            xs = split_items(items, split)
            return [classification_ids(card, tok, x.text) for x in xs], [index[x.label] for x in xs]

        self.train_rows, self.train_labels = encode("train")
        if r.data.limit is not None:
            self.train_rows, self.train_labels = self.train_rows[: r.data.limit], self.train_labels[: r.data.limit]
        self.val_rows, self.val_labels = encode("val")
        self.tokens_per_step = round(r.batch_size * sum(map(len, self.train_rows)) / len(self.train_rows))
        self.order = EpochOrder(len(self.train_rows), r.seed)

    def train_module(self) -> nn.Module:
        if self.lora is None:
            return ClassifierLoss(self.model)
        return ClassifierLoss(self.model, groups=lambda: {"lora": lora_parameters(self.model),
                                                          "score": [self.model.score.weight]})

    def batch(self, step: int, start: int, count: int) -> dict[str, Tensor]:
        rows = self.order.rows(step, start, count, self.r.batch_size)
        return collate([torch.tensor(self.train_rows[j]) for j in rows], [self.train_labels[j] for j in rows],
                       self.pad)

    @torch.no_grad()
    def evaluate(self, limit: int | None, dtype: torch.dtype | None, loss_module: nn.Module | None,
                 ) -> dict[str, Any]:
        """Loss and accuracy on the first ``limit`` val items (all when None)."""
        rows, labels = self.val_rows[:limit], torch.tensor(self.val_labels[:limit])
        probs = predict(self.model, rows, self.pad)
        loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels)
        return {"val_loss": float(loss), "val_accuracy": float((probs.argmax(-1) == labels).float().mean()),
                "val_items": len(rows)}

    @classmethod
    def evaluate_run(cls, checkpoint: Path, out: Path, limit: int | None = None) -> dict[str, Any]:
        """Test-split accuracy and macro-F1, the same-run baselines, and ``confusion.png``."""
        import time

        from omnigpt.apps.common import baselines, figures, metrics
        from omnigpt.checkpoints.registry import load
        from omnigpt.data.textsets import load_classification, split_items

        model, tok, _ = load(checkpoint)[:3]
        card = task_card(model.config)
        if card.get("pipeline") != "text-classification":
            raise ValueError(f"{checkpoint}: not a text classifier (task card {card})")
        labels, items = load_classification(card["dataset"])
        test = split_items(items, "test")[:limit]
        t0 = time.perf_counter()
        rows = [classification_ids(card, tok, x.text) for x in test]
        with autocast():
            probs = predict(model, rows)
        preds = [labels[int(i)] for i in probs.argmax(-1)]
        seconds = time.perf_counter() - t0
        targets = [x.label for x in test]
        scores = metrics.classification_scores(preds, targets, labels)
        figures.confusion_png(metrics.confusion(preds, targets, labels), labels, out / "confusion.png",
                              f"{card['dataset']} test, {len(test)} items\naccuracy {scores['accuracy']:.3f}")
        return {"dataset": card["dataset"], "split": "test", "items": len(test), **scores,
                "seconds": round(seconds, 1),
                "baselines": baselines.classification_baselines(card["dataset"], "test", limit)}


__all__ = ["ClassifyDataSpec", "ClassifyTask"]
