"""Preprocessing: Whisper's mel filterbank and log-mel formula (references: ``mel_filters.npz`` and Whisper's
``log_mel_spectrogram``, on real speech), resampling, image transforms, bad files, and the ``Processor``."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from multimodal_helpers import ByteTokenizer
from PIL import Image

from omnigpt.files.assets import AssetError, asset_path
from omnigpt.text.processors import (
    AUDIO_END,
    AUDIO_START,
    AUDIO_TOKEN,
    IMAGE_END,
    IMAGE_START,
    IMAGE_TOKEN,
    Processor,
    ProcessorConfig,
    ProcessorError,
    image_to_tensor,
    load_audio,
    load_image,
    log_mel_spectrogram,
    mel_filterbank,
    resample,
)

ASTERISK = Path("/usr/share/asterisk/sounds/en_US_f_Allison")


@pytest.fixture(scope="module")
def whisper_filters() -> dict[str, np.ndarray]:
    try:
        path = asset_path("openai-whisper", "whisper/assets/mel_filters.npz")
    except AssetError as e:
        pytest.skip(f"needs PyPI openai-whisper==20250625 sdist (whisper/assets/mel_filters.npz): {e}")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def speech_files(n: int) -> list[Path]:
    files = sorted(ASTERISK.rglob("*.wav"))
    if not files:
        pytest.skip(f"needs Debian package asterisk-core-sounds-en-wav (real speech in {ASTERISK})")
    return files[:: max(1, len(files) // n)][:n]


pytestmark = pytest.mark.usefixtures("one_thread")


def whisper_log_mel(audio: torch.Tensor, filters: torch.Tensor) -> torch.Tensor:
    """Whisper's ``log_mel_spectrogram`` (whisper/audio.py, openai-whisper 20250625), for 16 kHz audio."""
    window = torch.hann_window(400)
    stft = torch.stft(audio, 400, 160, window=window, return_complex=True)
    magnitudes = stft[..., :-1].abs() ** 2
    mel_spec = filters @ magnitudes
    log_spec = torch.clamp(mel_spec, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


# ------------------------------------------------------------------------------------------------------------
# Audio front end


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filterbank_equals_whisper_npz(whisper_filters, n_mels):
    ours = mel_filterbank(16000, 400, n_mels)
    ref = whisper_filters[f"mel_{n_mels}"]
    assert ours.shape == ref.shape == (n_mels, 201) and ours.dtype == ref.dtype == np.float32
    np.testing.assert_array_equal(ours, ref)  # bit-identical: librosa's float64 maths, float32 storage


def test_log_mel_matches_whisper_on_real_speech(whisper_filters):
    filters = torch.from_numpy(whisper_filters["mel_80"])
    worst, checked = 0.0, 0
    for path in speech_files(12):
        wave, sr = load_audio(path)
        assert sr == 8000  # Asterisk prompts are 8 kHz telephone audio: resampling is exercised
        wave16 = resample(wave, sr, 16000)
        ours, ref = log_mel_spectrogram(wave16), whisper_log_mel(wave16, filters)
        assert ours.shape == ref.shape == (80, wave16.numel() // 160)
        worst = max(worst, float((ours - ref).abs().max()))
        checked += 1
    assert checked >= 10 and worst < 1e-4, worst


def test_processor_audio_is_whisper_on_the_padded_clip(whisper_filters):
    path = speech_files(1)[0]
    proc = Processor(ByteTokenizer(), ProcessorConfig(audio_seconds=30.0))
    feats = proc.audio(path)
    assert feats.shape == (80, 3000)  # Whisper's 30 s window
    wave, sr = load_audio(path)
    padded = torch.nn.functional.pad(resample(wave, sr, 16000), (0, 480000 - math.ceil(wave.numel() * 2)))
    ref = whisper_log_mel(padded, torch.from_numpy(whisper_filters["mel_80"]))
    assert float((feats - ref).abs().max()) < 1e-4


@pytest.mark.parametrize("orig,new", [(8000, 16000), (44100, 16000), (22050, 16000), (16000, 8000)])
def test_resample_sine_is_band_limited_interpolation(orig, new):
    f = 440.0
    x = torch.sin(2 * math.pi * f * torch.arange(orig) / orig)  # 1 s
    y = resample(x, orig, new)
    assert y.numel() == math.ceil(orig * new / orig)
    ref = torch.sin(2 * math.pi * f * torch.arange(y.numel()) / new)
    edge = new // 50  # the filter's zero padding disturbs the first and last few ms
    assert float((y - ref)[edge:-edge].abs().max()) < 2e-3


def test_load_audio_downmixes_stereo_flac(tmp_path):
    left = np.linspace(-0.5, 0.5, 8000, dtype=np.float32)
    stereo = np.stack([left, -left * 0.5], axis=1)
    sf.write(tmp_path / "s.flac", stereo, 16000)
    wave, sr = load_audio(tmp_path / "s.flac")
    assert sr == 16000 and wave.shape == (8000,)
    np.testing.assert_allclose(wave.numpy(), stereo.mean(axis=1), atol=1e-4)  # FLAC is 16-bit here


def _real_wav_bytes() -> bytes:
    return speech_files(1)[0].read_bytes()


@pytest.mark.parametrize("case", ["truncated_wav", "header_only_wav", "empty_file", "zero_frames_wav", "text_file",
                                  "truncated_flac", "missing"])
def test_bad_audio_is_a_clear_error_naming_the_file(tmp_path, case):
    path = tmp_path / f"bad_{case}.wav"
    if case == "truncated_wav":
        data = _real_wav_bytes()
        path.write_bytes(data[: len(data) // 2])  # header still claims the full length
    elif case == "header_only_wav":
        path.write_bytes(_real_wav_bytes()[:44])
    elif case == "empty_file":
        path.write_bytes(b"")
    elif case == "zero_frames_wav":
        sf.write(path, np.zeros((0, 1), np.float32), 16000)
    elif case == "text_file":
        path.write_text("this is not audio\n" * 20)
    elif case == "truncated_flac":
        path = tmp_path / "bad.flac"
        sf.write(path, np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32), 16000)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ProcessorError, match=path.name):
        load_audio(path)
    with pytest.raises(ProcessorError, match=path.name):  # the Processor surfaces the same error
        Processor(ByteTokenizer(), ProcessorConfig(audio_seconds=1.0)).audio(path)


def test_audio_longer_than_the_window_is_refused_or_trimmed(tmp_path):
    sf.write(tmp_path / "long.wav", np.zeros(32000, np.float32) + 0.1, 16000)  # 2 s
    with pytest.raises(ProcessorError, match="long.wav: clip of 2.00 s is longer than the 1 s limit"):
        Processor(ByteTokenizer(), ProcessorConfig(audio_seconds=1.0)).audio(tmp_path / "long.wav")
    feats = Processor(ByteTokenizer(), ProcessorConfig(audio_seconds=1.0, truncate_audio=True)).audio(
        tmp_path / "long.wav")
    assert feats.shape == (80, 100)
    with pytest.raises(ProcessorError, match=r"<waveform>: clip of 2.00 s is longer than audio_seconds=1.0"):
        Processor(ByteTokenizer(), ProcessorConfig(audio_seconds=1.0)).audio((np.zeros(16000, np.float32), 8000))


# ------------------------------------------------------------------------------------------------------------
# Images


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width × height (a decompression-bomb stand-in; no pixels needed)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def test_image_resize_crop_normalise(tmp_path):
    # 60 × 30: left third red, middle green, right blue. Shortest edge → 8, centre crop keeps the green middle.
    arr = np.zeros((30, 60, 3), np.uint8)
    arr[:, :20, 0], arr[:, 20:40, 1], arr[:, 40:, 2] = 255, 255, 255
    Image.fromarray(arr).save(tmp_path / "bands.png")
    cfg = ProcessorConfig(image_size=8, image_tokens=4)
    x = Processor(ByteTokenizer(), cfg).image(tmp_path / "bands.png")
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32
    centre = x[:, 2:6, 3:5]  # well inside the green band: (0, 1, 0) normalised by mean 0.5, std 0.5
    torch.testing.assert_close(centre, torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand_as(centre), atol=0.02,
                               rtol=0)
    squashed = image_to_tensor(Image.open(tmp_path / "bands.png"), 6, "RGB", (0.5,) * 3, (0.5,) * 3, crop=False)
    assert squashed[0, 3, 0] > 0.9 and squashed[2, 3, -1] > 0.9  # all three bands survive squashing


def test_transparent_pixels_go_onto_the_background_and_grayscale_mode():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # fully transparent black
    x = image_to_tensor(rgba, 4, "RGB", (0.0,) * 3, (1.0,) * 3)
    assert torch.equal(x, torch.ones(3, 4, 4))  # white, not black
    g = image_to_tensor(Image.new("RGB", (5, 5), (255, 255, 255)), 4, "L", (0.5,), (0.5,))
    assert g.shape == (1, 4, 4) and torch.allclose(g, torch.ones(1, 4, 4))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image_is_a_clear_error(tmp_path, fmt):
    rng = np.random.default_rng(0)
    path = tmp_path / f"photo.{fmt.lower()}"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path, fmt)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ProcessorError, match=f"photo.{fmt.lower()}.*(truncated|corrupt)"):
        load_image(path, max_pixels=10**6)


def test_non_image_file_is_a_clear_error(tmp_path):
    (tmp_path / "notes.jpg").write_text("hello, I am text\n")
    with pytest.raises(ProcessorError, match="notes.jpg: not an image"):
        Processor(ByteTokenizer(), ProcessorConfig(image_size=8, image_tokens=4)).image(tmp_path / "notes.jpg")
    with pytest.raises(ProcessorError, match="missing.png"):
        load_image(tmp_path / "missing.png", max_pixels=10**6)


def test_decompression_bombs_are_errors(tmp_path):
    (tmp_path / "bomb.png").write_bytes(_png_claiming(30000, 30000))  # 900 M pixels: Pillow itself refuses
    with pytest.raises(ProcessorError, match="bomb.png: decompression bomb"):
        load_image(tmp_path / "bomb.png", max_pixels=50_000_000)
    (tmp_path / "big.png").write_bytes(_png_claiming(8000, 8000))  # 64 M: under Pillow's limit, over ours
    with pytest.raises(ProcessorError, match="big.png: image of 8000x8000 = 64,000,000 pixels exceeds the limit"):
        Processor(ByteTokenizer(), ProcessorConfig(max_image_pixels=50_000_000)).image(tmp_path / "big.png")
    # Above Pillow's MAX_IMAGE_PIXELS (89.5 M) but below twice that Pillow only warns: that warning is an error.
    (tmp_path / "warn.png").write_bytes(_png_claiming(10000, 10000))  # 100 M pixels
    assert Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < 10000 * 10000
    with pytest.raises(ProcessorError, match="warn.png.*decompression bomb"):
        load_image(tmp_path / "warn.png", max_pixels=10**12)


# ------------------------------------------------------------------------------------------------------------
# The processor


def _images(tmp_path: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.new("RGB", (10 + i, 12), (40 * i, 100, 200)).save(p)
        paths.append(p)
    return paths


def test_processor_expands_placeholders_and_batches(tmp_path):
    tok = ByteTokenizer()
    cfg = ProcessorConfig(image_size=8, image_tokens=3, audio_seconds=0.5, audio_tokens=2)
    proc = Processor(tok, cfg)
    ids = {t: tok.token_to_id(t) for t in (IMAGE_TOKEN, AUDIO_TOKEN, IMAGE_START, IMAGE_END, AUDIO_START, AUDIO_END)}
    assert all(v is not None and v >= 256 for v in ids.values())  # registered as special tokens
    imgs = _images(tmp_path, 3)
    clip = (np.sin(np.arange(4000) / 5).astype(np.float32) * 0.3, 8000)
    batch = proc(["A <|image|> and <|audio|> then <|image|>?", "<|image|>B"], images=[imgs[:2], imgs[2:]],
                 audio=[[clip], []], answers=["yes", "no!"])
    assert set(batch) == {"input_ids", "attention_mask", "pixel_values", "input_features", "labels"}
    assert batch["pixel_values"].shape == (3, 3, 8, 8) and batch["input_features"].shape == (1, 80, 50)
    row0 = batch["input_ids"][0].tolist()
    img = [ids[IMAGE_START], *[ids[IMAGE_TOKEN]] * 3, ids[IMAGE_END]]
    aud = [ids[AUDIO_START], *[ids[AUDIO_TOKEN]] * 2, ids[AUDIO_END]]
    eos = tok.token_to_id("<|endoftext|>")
    expected0 = [*b"A ", *img, *b" and ", *aud, *b" then ", *img, *b"?", *b"yes", eos]
    assert row0 == expected0 and batch["attention_mask"][0].tolist() == [1] * len(expected0)
    expected1 = [*img, *b"B", *b"no!", eos]
    n1 = len(expected1)
    assert batch["input_ids"][1, :n1].tolist() == expected1  # right padding
    assert batch["attention_mask"][1].tolist() == [1] * n1 + [0] * (len(expected0) - n1)
    # Loss only on the answer (+ eos): -100 on the prompt, the placeholders and the padding.
    labels = batch["labels"]
    assert labels[0].tolist() == [-100] * (len(expected0) - 4) + [*b"yes", eos]
    assert labels[1].tolist() == [-100] * (n1 - 4) + [*b"no!", eos] + [-100] * (len(expected0) - n1)
    # Pixel values follow the placeholders: sample 0's two images, then sample 1's.
    for k, p in enumerate(imgs):
        assert torch.equal(batch["pixel_values"][k], proc.image(p))


def test_processor_left_padding_and_no_markers(tmp_path):
    proc = Processor(ByteTokenizer(), ProcessorConfig(image_size=8, image_tokens=2, markers=False,
                                                      padding_side="left"))
    batch = proc(["<|image|>x", "long text"], images=[_images(tmp_path, 1), []])
    pid = proc.image_token_id
    assert batch["input_ids"][0].tolist()[-3:] == [pid, pid, ord("x")]
    assert batch["attention_mask"][0].tolist() == [0] * 6 + [1] * 3
    assert "labels" not in batch and "input_features" not in batch


def test_processor_placeholder_count_mismatch_raises(tmp_path):
    proc = Processor(ByteTokenizer(), ProcessorConfig(image_size=8, image_tokens=2))
    with pytest.raises(ValueError, match=r"sample 0: text has 1 <\|image\|> and 0 <\|audio\|> placeholders, but 2"):
        proc("<|image|> one", images=_images(tmp_path, 2))
    with pytest.raises(ValueError, match="sample 1"):
        proc(["a", "b <|audio|>"], images=[[], []], audio=[[], []])
    with pytest.raises(ValueError, match="images has 1 entries for 2 samples"):
        proc(["a", "b"], images=[[]])
    with pytest.raises(ValueError, match="one list per sample"):
        proc(["<|image|>a", "<|image|>b"], images=_images(tmp_path, 2))  # flat list for a batch: ambiguous
    with pytest.raises(ValueError, match="exceed max_length"):
        Processor(ByteTokenizer(), ProcessorConfig(max_length=4))("too long for it")


def test_processor_config_round_trip(tmp_path):
    cfg = ProcessorConfig(image_size=28, image_mode="L", image_mean=(0.3,), image_std=(0.2,), audio_seconds=2.0,
                          image_tokens=16, audio_tokens=50)
    Processor(ByteTokenizer(), cfg).save_pretrained(tmp_path)
    again = Processor.from_pretrained(tmp_path, ByteTokenizer())
    assert again.config == cfg
    (tmp_path / "processor_config.json").write_text('{"image_size": 8, "bogus": 1}')
    with pytest.raises(ValueError, match="bogus"):
        Processor.from_pretrained(tmp_path, ByteTokenizer())


def test_processor_with_omnigpt_tokenizer_saves_and_reloads_it(tmp_path):
    from omnigpt.text.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz ?:_<|>")
    proc = Processor(tok, ProcessorConfig(image_size=8, image_tokens=2))
    assert proc.image_token_id == tok.token_to_id(IMAGE_TOKEN) >= 33  # registered after the characters
    text = "what is <|image|>? not a placeholder: <|audio_start|>"  # only <|image|> is special here
    batch = proc(text, images=_images(tmp_path, 1), answers="a dog")
    assert batch["input_ids"][0].tolist().count(proc.ids[AUDIO_START]) == 0  # user text never becomes special
    proc.save_pretrained(tmp_path / "p")
    again = Processor.from_pretrained(tmp_path / "p")  # tokenizer read back from the same directory
    assert again.ids == proc.ids
    b2 = again(text, images=_images(tmp_path, 1), answers="a dog")
    assert all(torch.equal(batch[k], b2[k]) for k in batch)
