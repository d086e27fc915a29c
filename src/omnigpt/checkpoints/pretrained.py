"""The pretrained layer: one ``save_pretrained`` / ``load_pretrained`` for every model kind.

A model directory is ``config.json`` + ``model.safetensors`` (+ tokenizer or processor files). ``load_pretrained``
reads ``model_type`` from ``config.json`` and dispatches:

* ``gpt2``, ``openai-gpt``, ``qwen2``, ``omnigpt`` (or no ``model_type``: a bare ``GPTConfig`` dict) → the GPT
  family through the Hugging Face key tables in ``checkpoints/hf.py`` (so transformers' own directories load too);
* every other kind is registered in ``MODEL_TYPES`` with its config and model class: the config is
  ``Config.from_dict(config.json)`` and the weights are omnigpt's own state dict, loaded strictly.

Saving is the inverse, always committed as one atomic directory (``files/atomic.py``); ``write_pretrained``
writes into a directory the caller commits (the trainer adds ``trainer_state/`` to the same commit).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from omnigpt.checkpoints import hf
from omnigpt.checkpoints.hf_config import CheckpointError, not_local_error
from omnigpt.files.atomic import atomic_directory, read_json_object, verify_manifest

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
GPT_TYPES = ("gpt2", "openai-gpt", "qwen2", "omnigpt")


# model_type → ("module:ConfigClass", "module:ModelClass"): the config class has from_dict/to_dict, the model class
# takes the config. Strings, imported on use, so that loading a GPT does not import every family.
MODEL_TYPES: dict[str, tuple[str, str] | Callable[[], tuple[type, type]]] = {
    "omnigpt-multimodal": ("omnigpt.models.multimodal:MultimodalConfig", "omnigpt.models.multimodal:MultimodalGPT"),
    "omnigpt-contrastive": ("omnigpt.models.contrastive:ContrastiveConfig",
                            "omnigpt.models.contrastive:ContrastiveModel"),
    "omnigpt-image-classifier": ("omnigpt.models.vision:ImageClassifierConfig",
                                 "omnigpt.models.vision:ViTForImageClassification"),
    "omnigpt-igpt": ("omnigpt.models.igpt:IGPTConfig", "omnigpt.models.igpt:IGPT"),
    "omnigpt-mobilenet-classifier": ("omnigpt.models.mobilenet:MobileNetClassifierConfig",  # apps/image_classify
                                     "omnigpt.models.mobilenet:MobileNetV2ForImageClassification"),
    "omnigpt-pix2seq": ("omnigpt.models.pix2seq:Pix2SeqConfig", "omnigpt.models.pix2seq:Pix2Seq"),  # apps/detect
    "omnigpt-whisper": ("omnigpt.models.whisper:WhisperConfig", "omnigpt.models.whisper:Whisper"),  # apps/asr
    "omnigpt-audio-classifier": ("omnigpt.models.audio_classifier:AudioClassifierConfig",  # apps/voice_commands
                                 "omnigpt.models.audio_classifier:AudioClassifier"),
}


def register_model_type(model_type: str, classes: tuple[str, str] | Callable[[], tuple[type, type]]) -> None:
    """Make ``load_pretrained`` build ``model_type`` directories with (config class, model class): a pair of
    "module:name" strings, or a function returning the two classes."""
    MODEL_TYPES[model_type] = classes


def model_classes(model_type: str) -> tuple[type, type]:
    """(config class, model class) of a registered ``model_type``, imported now."""
    entry = MODEL_TYPES[model_type]
    if callable(entry):
        return entry()
    config_cls, model_cls = (getattr(importlib.import_module(module), name)
                             for module, _, name in (ref.partition(":") for ref in entry))
    return config_cls, model_cls


def read_config(directory: str | Path) -> dict[str, Any]:
    """``config.json`` of a model directory, after its SHA-256 manifest (when omnigpt wrote it) checks out."""
    d = Path(directory)
    if not d.is_dir():
        raise not_local_error(str(directory))
    try:
        verify_manifest(d)  # flipped bytes or edits after saving are an error, not a silently different model
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    return read_json_object(d / CONFIG, CheckpointError, " (not a saved model directory)")


def model_type(directory: str | Path) -> str:
    """The kind of model a directory holds (GPT-family directories answer their HF ``model_type``)."""
    return str(read_config(directory).get("model_type", "omnigpt"))


def load_pretrained(directory: str | Path, map_location: str | torch.device = "cpu",
                    dtype: torch.dtype | None = torch.float32, **gpt_options: Any) -> Any:
    """The model saved in ``directory``, whatever its kind, in eval mode. ``gpt_options`` (``head``,
    ``model_class``) apply to the GPT family only."""
    d = Path(directory)
    cfg = read_config(d)
    kind = cfg.get("model_type")
    if kind is None or kind in GPT_TYPES:
        return hf.load_gpt(d, map_location, dtype, **gpt_options)
    if kind not in MODEL_TYPES:
        known = ", ".join([*GPT_TYPES, *MODEL_TYPES])
        raise CheckpointError(f"{d / CONFIG}: model_type {kind!r} is not one omnigpt loads ({known})")
    if gpt_options:
        raise TypeError(f"load_pretrained: {sorted(gpt_options)} apply to GPT checkpoints, not {kind!r}")
    config_cls, model_cls = model_classes(kind)
    try:
        config = config_cls.from_dict(cfg)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{d / CONFIG}: {e}") from None
    model = model_cls(config)
    _load_weights(model, d / WEIGHTS, map_location)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def _load_weights(model: nn.Module, path: Path, map_location: str | torch.device) -> None:
    from safetensors.torch import load_model

    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    model.to(map_location)
    try:
        load_model(model, str(path), strict=True, device=str(map_location))
    except (OSError, RuntimeError) as e:  # missing / unexpected keys, wrong shapes, truncated file
        raise CheckpointError(f"{path}: cannot load weights: {e}") from None


def write_pretrained(model: nn.Module, directory: str | Path, tokenizer: Any = None) -> None:
    """config.json + model.safetensors (+ the files of ``tokenizer``, a tokenizer or a processor) into an existing
    directory, not atomically: for callers that commit a larger directory themselves."""
    d, preprocessor = Path(directory), tokenizer
    if isinstance(model, hf.AnyGPTTypes):
        tokenizer = getattr(preprocessor, "tokenizer", preprocessor)  # a processor carries its tokenizer
        hf.write_pretrained(model, d, tokenizer)
        if preprocessor is not tokenizer:
            preprocessor.save_pretrained(d)
        return
    config = getattr(model, "config", None)
    config_dict = config.to_dict() if hasattr(config, "to_dict") else {}
    if config_dict.get("model_type") not in MODEL_TYPES:
        raise TypeError(f"save_pretrained: {type(model).__name__} is not a model kind omnigpt saves "
                        f"(GPT family or one of {sorted(MODEL_TYPES)})")
    from safetensors.torch import save_model

    (d / CONFIG).write_text(json.dumps(config_dict, indent=2) + "\n")
    save_model(model, str(d / WEIGHTS), metadata={"format": "pt"})  # tied tensors are stored once
    if preprocessor is not None:
        save = getattr(preprocessor, "save_pretrained", None) or preprocessor.save
        save(d)


def save_pretrained(model: nn.Module, directory: str | Path, tokenizer: Any = None) -> Path:
    """Commit ``model`` (+ ``tokenizer``: a tokenizer or a processor) as one atomic directory that
    ``load_pretrained`` reads back."""
    with atomic_directory(directory) as tmp:
        write_pretrained(model, tmp, tokenizer)
    return Path(directory)


__all__ = ["MODEL_TYPES", "load_pretrained", "model_classes", "model_type", "read_config", "register_model_type",
           "save_pretrained", "write_pretrained"]
