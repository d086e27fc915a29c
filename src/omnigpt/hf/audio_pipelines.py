"""The ``"audio-classification"`` pipeline in Hugging Face's shape: voice commands from an ``audio-classify`` run.

    >>> from omnigpt import pipeline
    >>> classify = pipeline("audio-classification", model="runs/voice-commands")
    >>> classify("/usr/share/asterisk/sounds/en_US_f_Allison/digits/7.wav", top_k=2)
    [{'label': 'seven', 'score': 0.98}, {'label': 'eleven', 'score': 0.01}]

``audio_classification(model, device, top_k=5)`` → ``classify(inputs, top_k=None, sampling_rate=None)``. ``model``
is an ``audio-classify`` run or checkpoint directory (``train/tasks/audio_classify.py``; there is no default). An
input is a path (WAV/FLAC/OGG, any rate: resampled), a 1-D float array at ``sampling_rate`` Hz (default 16 kHz, as
transformers assumes), or transformers' dict ``{"raw": array, "sampling_rate": sr}`` (``"array"`` is accepted for
``"raw"``). One input returns ``[{"label", "score"}, ...]`` (the ``top_k`` best, best first); a list returns one such
list per input — what ``transformers.pipeline("audio-classification")`` returns. The recording goes through the same
front end as training (``data.keywords.read_clips`` + ``clip_features``: resampled to the model's rate, silence
trimmed, the model's window, its log-mel scaling). An empty, silent or non-audio input is a ``ProcessorError``
(a ValueError) naming the input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnigpt.apps.voice_commands.data import clip_features, read_clips
from omnigpt.checkpoints.pretrained import load_pretrained
from omnigpt.checkpoints.state import resolve_checkpoint
from omnigpt.models.audio_classifier import AudioClassifier
from omnigpt.text.processors import ProcessorError

DEFAULT_ARRAY_RATE = 16000  # transformers' audio pipelines read bare arrays as 16 kHz


class AudioClassifierPipeline:
    """An ``audio-classify`` checkpoint as a pipeline callable."""

    def __init__(self, model: AudioClassifier, device: str = "cpu", top_k: int = 5) -> None:
        self.model, self.device = model.to(device).eval(), device
        self.top_k = top_k

    @property
    def labels(self) -> tuple[str, ...]:
        return self.model.config.labels

    def _source(self, item: Any, i: int, sampling_rate: int | None) -> tuple[Any, int | None]:
        """(a path or a 1-D array, the array's rate) of one input."""
        if isinstance(item, str | Path):
            return item, None
        if isinstance(item, dict):
            raw = item.get("raw", item.get("array"))
            rate = item.get("sampling_rate")
            if raw is None or not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
                raise ProcessorError(f"input {i}: a dict input needs 'raw' (a 1-D array) and a positive integer "
                                     f"'sampling_rate'")
            return raw, rate
        if isinstance(item, np.ndarray | torch.Tensor):
            return item, sampling_rate or DEFAULT_ARRAY_RATE
        raise ProcessorError(f"input {i}: expected an audio path, a 1-D array or {{'raw', 'sampling_rate'}}, got "
                             f"{type(item).__name__}")

    def __call__(self, inputs: Any, top_k: int | None = None,
                 sampling_rate: int | None = None) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
        single = not isinstance(inputs, list | tuple)
        items = [inputs] if single else list(inputs)
        if not items:
            raise ValueError("no inputs: pass a recording or a non-empty list of recordings")
        k = self.top_k if top_k is None else top_k
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"top_k must be a positive integer, got {k!r}")
        k = min(k, len(self.labels))
        cfg = self.model.config
        feats = []
        for i, item in enumerate(items):  # one at a time: each array may have its own rate
            src, rate = self._source(item, i, sampling_rate)
            w, n = read_clips([src if isinstance(src, str | Path) else np.asarray(src, dtype=np.float32)],
                              cfg.sample_rate, cfg.seconds, sample_rate=rate, first_index=i)
            feats.append(clip_features(w, n, cfg.sample_rate, cfg.cmn))
        x = torch.cat(feats).to(self.device)  # (N, 80, frames)
        with torch.inference_mode():
            probs = self.model(x).logits.float().softmax(-1).cpu()  # (N, K)
        scores, idx = probs.topk(k, dim=-1)
        out = [[{"label": self.labels[j], "score": s} for s, j in zip(sr, ir, strict=True)]
               for sr, ir in zip(scores.tolist(), idx.tolist(), strict=True)]
        return out[0] if single else out


def audio_classification(model: str | Path | None = None, device: str | None = None, top_k: int = 5,
                         **kwargs: Any) -> AudioClassifierPipeline:
    """The ``"audio-classification"`` pipeline over an audio-classify run or checkpoint directory."""
    if kwargs:
        raise TypeError(f"audio-classification: unexpected options {sorted(kwargs)}")
    if model is None:
        raise ValueError("audio-classification needs model=<an audio-classify run directory> (omnigpt train "
                         "configs/tasks/voice-commands.yaml)")
    loaded = load_pretrained(resolve_checkpoint(model), map_location=device or "cpu")
    if not isinstance(loaded, AudioClassifier):
        raise ValueError(f"{model}: not an audio classifier (it holds a {type(loaded).__name__}); pass an "
                         f"audio-classify run")
    return AudioClassifierPipeline(loaded, device or "cpu", top_k)


__all__ = ["AudioClassifierPipeline", "audio_classification"]
