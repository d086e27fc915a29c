"""``pipeline("text-classification" | "sentiment-analysis", model=RUN)``: a ``classify`` run labels texts.

The run's task card says how a text becomes ids (the training format) and its ``id2label`` names the classes.
One text returns ``{"label", "score"}`` (the best label; ``top_k=None``: every label, best first), a list of texts
one result per text — transformers' shapes. There is no default model: train one with
``configs/tasks/sentiment-zh.yaml`` or ``topic-bbc.yaml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from omnigpt.apps.common.pipeline import TextPipeline
from omnigpt.generate.classify import predict
from omnigpt.text.task_card import classification_ids


class TextClassificationPipeline(TextPipeline):
    task = "text-classification"
    always_list = True

    def __init__(self, model: str | Path | None = None, device: str | None = None, **defaults: Any) -> None:
        if model is None:
            raise ValueError("text-classification needs model=RUN: a run of the classify task (e.g. "
                             "runs/apps/sentiment-zh; configs/tasks/sentiment-zh.yaml trains one)")
        super().__init__(model, device, **defaults)
        id2label = self.model.config.extra.get("id2label")
        if not self.card or not id2label or not hasattr(self.model, "score"):
            raise ValueError(f"model {self.name} is not a text classifier (no task card with labels and no score "
                             f"head); train one with the classify task")
        self.labels = [id2label[str(i)] for i in range(len(id2label))]

    def options(self, top_k: int | None = 1) -> dict[str, Any]:
        return {"top_k": top_k}

    def forward(self, batch: list[str], **options: Any) -> torch.Tensor:
        return predict(self.model, [classification_ids(self.card, self.tokenizer, t) for t in batch])  # (N, K)

    def postprocess(self, probs: torch.Tensor, batch: list[str], top_k: int | None) -> list[Any]:
        out = []
        for p in probs:
            best = [{"label": self.labels[int(i)], "score": float(p[i])} for i in p.argsort(descending=True)]
            out.append(best[0] if top_k == 1 else best[: top_k or None])
        return out


__all__ = ["TextClassificationPipeline"]
