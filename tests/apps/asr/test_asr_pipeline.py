"""The asr application's pipeline on the pretrained Whisper tiny.en: ``omnigpt.pipeline("automatic-speech-
recognition")`` on a real recording (Debian ``asterisk-core-sounds-en-wav``). The fine-tuning task is
tests/apps/asr/test_whisper_finetune.py."""

from __future__ import annotations

import pytest

from omnigpt.hf.pipelines import pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def test_speech_recognition_pipeline_on_a_real_recording(tmp_path):
    """Whisper tiny.en through the pipeline: HF's {"text"} shape; a 0-byte file and an empty array are errors
    naming the input; silence transcribes to nothing (the no-speech rule)."""
    import numpy as np

    wav = "/usr/share/asterisk/sounds/en_US_f_Allison/conf-invalid.wav"
    asr = pipeline("automatic-speech-recognition")
    assert asr(wav) == {"text": "That is not a valid conference number. Please try again."}
    assert asr([np.zeros(16000, dtype=np.float32)]) == [{"text": ""}]
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(ValueError, match=r"input 0 \(.*empty.wav\): .*cannot read audio"):
        asr(str(tmp_path / "empty.wav"))
    with pytest.raises(ValueError, match="input 0 \\(array\\): audio must be a non-empty"):
        asr(np.zeros(0, dtype=np.float32))
