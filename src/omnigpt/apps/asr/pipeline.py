"""``pipeline("automatic-speech-recognition", model=...)``: Whisper transcribes speech.

``model`` is an offline name (``whisper-tiny.en``, the default; ``whisper-base`` for other languages), a
CTranslate2 Whisper directory, or a run / checkpoint directory of the ``asr-whisper`` task. An input is an audio
path or a 16 kHz waveform; one input returns ``{"text"}``, a list one ``{"text"}`` per input — transformers' shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omnigpt.apps.common.pipeline import Pipeline
from omnigpt.checkpoints.registry import Loaded, load
from omnigpt.models.whisper import Whisper


class SpeechRecognitionPipeline(Pipeline):
    task = "automatic-speech-recognition"
    model_types = (Whisper,)
    default_model = "whisper-tiny.en"
    what, needs = "a Whisper speech recognizer", "a Whisper model: whisper-tiny.en, whisper-base or an asr-whisper run"
    batch_size = 1  # Whisper decodes one recording at a time here

    def load(self, model: str | Path, device: str | None) -> Loaded:
        from omnigpt.checkpoints.ctranslate2 import load_tokenizer, load_whisper
        from omnigpt.checkpoints.pretrained import load_pretrained
        from omnigpt.checkpoints.state import resolve_checkpoint

        path = Path(model)
        if not path.is_dir():  # an offline name
            return load(model, device)
        if (path / "model.bin").is_file():  # a CTranslate2 directory
            m, tok = load_whisper(path)
        else:  # a saved model, or a run: its newest checkpoint, with Whisper's tokenizer files
            ckpt = resolve_checkpoint(path)
            m = load_pretrained(ckpt)
            tok = load_tokenizer(ckpt) if isinstance(m, Whisper) else None
        return Loaded((m if device is None else m.to(device)).eval(), tok, None, "whisper")

    def options(self, language: str | None = None, beam_size: int = 1) -> dict[str, Any]:
        return {"language": language, "beam_size": beam_size}

    def is_single(self, inputs: Any) -> bool:
        return isinstance(inputs, str | Path) or (hasattr(inputs, "ndim") and inputs.ndim == 1)

    def preprocess(self, item: Any, index: int, **options: Any) -> tuple[Any, int]:
        return item, index  # the decoder reads the file itself (any rate, resampled to 16 kHz)

    def forward(self, batch: list[tuple[Any, int]], language: str | None, beam_size: int) -> list[str]:
        from omnigpt.generate.whisper import transcribe

        texts = []
        for audio, i in batch:
            try:
                texts.append(transcribe(self.model, self.preprocessor, audio, language=language,
                                        beam_size=beam_size).text.strip())
            except ValueError as e:
                name = audio if isinstance(audio, str | Path) else "array"
                raise ValueError(f"input {i} ({name}): {e}") from None
        return texts

    def postprocess(self, texts: list[str], batch: list[Any], **options: Any) -> list[dict[str, str]]:
        return [{"text": t} for t in texts]


__all__ = ["SpeechRecognitionPipeline"]
