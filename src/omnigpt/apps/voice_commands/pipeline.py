"""``pipeline("audio-classification", model=RUN)``: an ``audio-classify`` run names the spoken command.

An input is an audio path (any rate libsndfile reads), a 1-D waveform (``sampling_rate=``, default 16 kHz as in
transformers) or ``{"raw": array, "sampling_rate": int}``. One input returns ``[{"label", "score"}, ...]``
(``top_k``, best first; larger than the vocabulary means every label), a list one such list per input. Each clip
goes through the training features (``data.clip_features``: trimmed, padded, log-mel, CMN). Empty, silent or
unreadable audio is a ``ProcessorError`` naming the file or the input's position.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnigpt.apps.common.pipeline import Pipeline, check_top_k, ranked
from omnigpt.apps.voice_commands.data import clip_features, read_clips
from omnigpt.models.audio_classifier import AudioClassifier
from omnigpt.text.processors import ProcessorError

DEFAULT_ARRAY_RATE = 16000  # transformers' audio pipelines read bare arrays as 16 kHz


class AudioClassificationPipeline(Pipeline):
    task = "audio-classification"
    model_types = (AudioClassifier,)
    what = "an audio classifier"
    needs = "an audio-classify run directory (omnigpt train configs/tasks/voice-commands.yaml)"

    @property
    def labels(self) -> tuple[str, ...]:
        return self.model.config.labels

    def options(self, top_k: int = 5, sampling_rate: int | None = None) -> dict[str, Any]:
        return {"top_k": check_top_k(top_k, len(self.labels), clip=True), "sampling_rate": sampling_rate}

    def _source(self, item: Any, i: int, sampling_rate: int | None) -> tuple[Any, int | None]:
        """(a path or a 1-D float32 array, the array's rate) of one input."""
        if isinstance(item, str | Path):
            return item, None
        if isinstance(item, dict):
            raw = item.get("raw", item.get("array"))
            rate = item.get("sampling_rate")
            if raw is None or not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
                raise ProcessorError(f"input {i}: a dict input needs 'raw' (a 1-D array) and a positive integer "
                                     f"'sampling_rate'")
            return np.asarray(raw, dtype=np.float32), rate
        if isinstance(item, np.ndarray | torch.Tensor):
            return np.asarray(item, dtype=np.float32), sampling_rate or DEFAULT_ARRAY_RATE
        raise ProcessorError(f"input {i}: expected an audio path, a 1-D array or {{'raw', 'sampling_rate'}}, got "
                             f"{type(item).__name__}")

    def preprocess(self, item: Any, index: int, top_k: int, sampling_rate: int | None) -> torch.Tensor:
        cfg = self.model.config
        src, rate = self._source(item, index, sampling_rate)
        w, n = read_clips([src], cfg.sample_rate, cfg.seconds, sample_rate=rate, first_index=index)
        return clip_features(w, n, cfg.sample_rate, cfg.cmn)[0]  # (80, frames)

    def forward(self, batch: list[torch.Tensor], **options: Any) -> torch.Tensor:
        return self.model(torch.stack(batch).to(self.device)).logits.float().softmax(-1).cpu()  # (N, K)

    def postprocess(self, probs: torch.Tensor, batch: list[Any], top_k: int, **options: Any) -> list[Any]:
        return ranked(probs, self.labels, top_k)


__all__ = ["AudioClassificationPipeline"]
