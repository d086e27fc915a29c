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

Registered tasks (``APPS``, one line per application folder, flattened into ``TASKS`` and ``PIPELINES``; each
task module's docstring says what it trains and how it is scored):

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

import functools
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omnigpt.train.recipe import Recipe, parse_recipe
from omnigpt.train.task import LossOf, Task, register_task, task_class


@dataclass(frozen=True)
class App:
    """One application folder's registry line: its tasks (recipe ``task:`` name → ``"module:Class"``, a ``Task``)
    and its pipelines (transformers task name → ``"module:Class"``, an ``apps.common.pipeline.Pipeline``); module
    paths are relative to the folder. Adding an application is its folder plus one line here."""

    tasks: dict[str, str] = field(default_factory=dict)
    pipelines: dict[str, str] = field(default_factory=dict)


APPS: dict[str, App] = {  # folder → what it registers
    "lm": App({"lm": "task:LMTask"}, {"text-generation": "pipeline:TextGenerationPipeline"}),
    "multimodal": App({"multimodal": "task:MultimodalTask"}),
    "contrastive": App({"contrastive": "task:ContrastiveTask"}),
    "sft": App({"sft": "task:SFTTask"}),
    "classify": App({"classify": "task:ClassifyTask"},
                    {"text-classification": "pipeline:TextClassificationPipeline",
                     "zero-shot-classification": "pipeline:ZeroShotClassificationPipeline"}),
    "seq2seq": App({"seq2seq": "task:Seq2SeqTask"}, {"summarization": "pipeline:SummarizationPipeline",
                                                     "translation": "pipeline:TranslationPipeline"}),
    "image_classify": App({"image-classify": "task:ImageClassifyTask"},
                          {"image-classification": "pipeline:ImageClassificationPipeline"}),
    "igpt": App({"igpt": "task:IGPTTask"}, {"text-to-image": "pipeline:TextToImagePipeline"}),
    "detect": App({"detect": "task:DetectTask"}, {"object-detection": "pipeline:ObjectDetectionPipeline"}),
    "voice_commands": App({"audio-classify": "task:AudioClassifyTask"},
                          {"audio-classification": "pipeline:AudioClassificationPipeline"}),
    "llava": App({"llava": "task:LlavaTask"}),
    "embed": App(pipelines={"feature-extraction": "pipeline:FeatureExtractionPipeline"}),
    "asr": App({"asr-whisper": "task:WhisperFinetuneTask"},
               {"automatic-speech-recognition": "pipeline:SpeechRecognitionPipeline"}),
}

# Flattened, with full module paths: task name → "omnigpt.apps.<folder>.<module>:<Class>", and the same for pipelines.
TASKS: dict[str, str] = {name: f"omnigpt.apps.{folder}.{target}"
                         for folder, app in APPS.items() for name, target in app.tasks.items()}
PIPELINES: dict[str, str] = {name: f"omnigpt.apps.{folder}.{target}"
                             for folder, app in APPS.items() for name, target in app.pipelines.items()}


def _load(target: str) -> type[Task]:
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)


for _name, _target in TASKS.items():
    register_task(_name, functools.partial(_load, _target))


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


__all__ = ["APPS", "PIPELINES", "TASKS", "App", "LossOf", "Task", "load_recipe", "sections", "task_class"]
