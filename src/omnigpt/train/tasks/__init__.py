"""Tasks: what the one ``Trainer`` trains. A task is a small class with a few hooks (torchtitan's way: a new model
kind overrides the batch and the loss, never the loop):

* ``check_recipe(recipe)`` — task-specific recipe checks, before anything loads (presets, stage module names);
* ``prepare(recipe)`` — data preparation, run once on rank 0 before the others read it;
* ``__init__(recipe)`` — data, tokenizer or processor (``preprocessor``), the model (``model``, what is saved);
* ``train_module()`` — the module that DDP/FSDP wrap: ``module(**batch)`` returns the scalar loss; its
  ``parameter_groups`` name the modules that stages train and scale;
* ``batch(step, start, count)`` — rows ``start … start+count-1`` of step ``step``'s global batch, a pure function
  of (seed, step): resumes and world sizes see the same data;
* ``evaluate(limit, dtype, loss_module)`` — validation metrics (``val_loss`` among them); ``limit=None`` is the
  full evaluation at the end of a run.

Registered tasks (``TASKS``; each module's docstring says what it trains and how it is scored):

* language: ``lm`` (causal LM), ``sft`` (chat fine-tuning), ``classify`` (sequence classification),
  ``seq2seq`` (summarization, translation);
* vision: ``image-classify`` (ViT from scratch, MobileNetV2 fine-tuned), ``igpt`` (class-conditional image
  generation), ``detect`` (Pix2Seq: boxes as tokens on composed scenes);
* speech: ``asr-whisper`` (Whisper tiny.en fine-tuned on synthesized speech), ``audio-classify`` (voice commands);
* multimodal: ``multimodal`` (the from-scratch ``MultimodalGPT``), ``contrastive`` (CLIP-style), ``llava``
  (MobileNetV2 + SmolLM2-135M-Instruct, or from scratch).

``omnigpt eval RUN`` calls the task's ``evaluate_run`` (metrics on held-out test data, baselines measured in the
same call, pictures).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from omnigpt.train.recipe import Recipe, parse_recipe
from omnigpt.train.tasks.base import LossOf, Task

TASKS: dict[str, str] = {
    "lm": "omnigpt.train.tasks.lm:LMTask",
    "multimodal": "omnigpt.train.tasks.multimodal:MultimodalTask",
    "contrastive": "omnigpt.train.tasks.contrastive:ContrastiveTask",
    "sft": "omnigpt.train.tasks.sft:SFTTask",
    "classify": "omnigpt.train.tasks.classify:ClassifyTask",
    "seq2seq": "omnigpt.train.tasks.seq2seq:Seq2SeqTask",
    "image-classify": "omnigpt.train.tasks.image_classify:ImageClassifyTask",
    "igpt": "omnigpt.train.tasks.igpt:IGPTTask",
    "detect": "omnigpt.train.tasks.detect:DetectTask",
    "audio-classify": "omnigpt.train.tasks.audio_classify:AudioClassifyTask",
    "llava": "omnigpt.train.tasks.llava:LlavaTask",
    "asr-whisper": "omnigpt.train.tasks.whisper_finetune:WhisperFinetuneTask",
}


def task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def sections(name: str) -> tuple[type, Any]:
    """The data and model section types of task ``name`` (each task declares its own)."""
    cls = task_class(name)
    return cls.data_spec, cls.model_spec


def load_recipe(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
                world_size: int = 1) -> Recipe:
    """Read, override, type-check and validate a recipe of any task (``recipe.parse_recipe`` with the task's own
    section types), then let the task check what only it can (model presets, the modules its stages name).
    Raises ``RecipeError`` (a ValueError)."""
    recipe = parse_recipe(sections, path, overrides, world_size)
    task_class(recipe.task).check_recipe(recipe)
    return recipe


__all__ = ["TASKS", "LossOf", "Task", "load_recipe", "sections", "task_class"]
