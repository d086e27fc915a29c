"""``pipeline("feature-extraction", model=...)``: a text's features from a BERT-family encoder, by default
all-MiniLM-L6-v2 (``"all-minilm-l6-v2"``, sentence-transformers' model, read from the pinned wheel).

As transformers' pipeline: one text gives its last hidden states as nested lists of shape (1, T, C) — one vector
per token, ``[CLS]`` and ``[SEP]`` included — and a list gives one such value per text. ``pool=True`` gives the
model's sentence embedding instead (C numbers: mean over the real tokens, unit length for MiniLM — what
``omnigpt embed`` prints and ``/v1/embeddings`` serves).
"""

from __future__ import annotations

from typing import Any

import torch

from omnigpt.apps.common.pipeline import Pipeline, TextPipeline
from omnigpt.checkpoints.encoders import tokenize_batch
from omnigpt.models.bert import BertModel

SENTENCE_ENCODER = "all-minilm-l6-v2"


class FeatureExtractionPipeline(Pipeline):
    task = "feature-extraction"
    model_types = (BertModel,)
    default_model = SENTENCE_ENCODER
    what, needs = "a text encoder", f"{SENTENCE_ENCODER!r} or a BERT-family model directory"
    batch_size = 32

    preprocess = TextPipeline.preprocess  # a non-empty str, else a ValueError naming its position

    def options(self, pool: bool = False) -> dict[str, Any]:
        if not isinstance(pool, bool):
            raise ValueError(f"pool must be True or False, got {pool!r}")
        return {"pool": pool}

    def forward(self, batch: list[str], pool: bool) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = {k: v.to(self.device) for k, v in tokenize_batch(self.preprocessor, batch).items()}
        if pool:
            return self.model.sentence_embedding(**inputs).float().cpu(), inputs["attention_mask"].cpu()  # (N, C)
        return self.model(**inputs).last_hidden_state.float().cpu(), inputs["attention_mask"].cpu()  # (N, T, C)

    def postprocess(self, output: tuple[torch.Tensor, torch.Tensor], batch: list[str], pool: bool) -> list[Any]:
        features, mask = output
        if pool:
            return features.tolist()
        return [[h[: int(n)].tolist()] for h, n in zip(features, mask.sum(1), strict=True)]  # (1, T_i, C) each


__all__ = ["SENTENCE_ENCODER", "FeatureExtractionPipeline"]
