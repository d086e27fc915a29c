"""``omnigpt.pipeline(task, model=...)``: transformers' pipelines, with their task names and output shapes.

    >>> from omnigpt import pipeline
    >>> pipeline("sentiment-analysis", model="runs/apps/sentiment-zh")("这个手机很好用")
    [{'label': 'positive', 'score': 0.97}]
    >>> pipeline("summarization", model="runs/apps/summarize-bbc")(article)
    [{'summary_text': '...'}]
    >>> pipeline("translation_en_to_es", model="runs/apps/translate-en-es")("In the beginning ...")
    [{'translation_text': '...'}]
    >>> pipeline("text-generation")("The capital of France is", max_new_tokens=8)
    [{'generated_text': 'The capital of France is Paris...'}]

Each task's pipeline is a subclass of the one ``Pipeline`` base (``apps/common/pipeline.py``) in its application's
folder, registered by that folder's line in ``omnigpt.apps.APPS``; this module resolves transformers' task names.
``model`` is a run directory (its newest checkpoint), a checkpoint directory or an offline name (``omnigpt.load``).
One input gives one result, a list of inputs a list.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from omnigpt.apps import PIPELINES

ALIASES = {"sentiment-analysis": "text-classification"}


def resolve_task(task: str) -> tuple[str, dict[str, str]]:
    """(registry name, keyword arguments) of a transformers task name (``translation_en_to_es`` → translation)."""
    if task.startswith("translation_"):
        parts = task.removeprefix("translation_").split("_to_")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"task {task!r}: expected translation_XX_to_YY (e.g. translation_en_to_es)")
        return "translation", {"src_lang": parts[0], "tgt_lang": parts[1]}
    name = ALIASES.get(task, task)
    if name not in PIPELINES:
        valid = sorted({*PIPELINES, *ALIASES, "translation_XX_to_YY"})
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(valid)}")
    return name, {}


def pipeline(task: str, model: str | Path | None = None, device: str | None = None, **kwargs: Any) -> Any:
    """The pipeline for ``task`` (transformers' names: ``sentiment-analysis``, ``text-classification``,
    ``summarization``, ``translation_en_to_es``, ``text-generation``, ...) with ``model`` loaded on ``device``;
    ``kwargs`` are the pipeline's default call options (``top_k=3``) or its constructor's (``src_lang``)."""
    name, extra = resolve_task(task)
    module, cls = PIPELINES[name].split(":")
    return getattr(importlib.import_module(module), cls)(model=model, device=device, **extra, **kwargs)


__all__ = ["ALIASES", "PIPELINES", "pipeline", "resolve_task"]
