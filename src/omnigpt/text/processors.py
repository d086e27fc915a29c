"""Image and audio preprocessing, and the ``Processor`` that turns a mixed sample into model inputs.

* Images (any format Pillow reads): decoded with a pixel limit (decompression bombs are errors, including
  Pillow's own ``DecompressionBombWarning``), EXIF-rotated, alpha composited onto a background, resized on the
  shortest edge + centre-cropped (or squashed) to a square, scaled to [0, 1] and normalised → (C, H, W).
* Audio (WAV/FLAC through ``soundfile``): mono, resampled to 16 kHz with a windowed-sinc filter written in torch
  (torchaudio's ``sinc_interp_hann`` algorithm; torchaudio itself is not a dependency), padded or checked to a
  fixed clip length, then Whisper's log-mel front end: STFT (n_fft 400, hop 160, Hann), power, 80 Slaney mel
  filters, log10 of the power clamped at 1e-10, floor at max − 8, (x + 4) / 4 (Whisper ``audio.py``).
  The filterbank is computed here (librosa's ``filters.mel`` with Slaney scale and norm) and tested equal to the
  ``mel_filters.npz`` that ships with openai-whisper.
* ``Processor``: text with ``<|image|>`` / ``<|audio|>`` placeholders + the images and clips → HF-style batches
  (``input_ids``, ``attention_mask``, ``pixel_values``, ``input_features``, and ``labels`` when answers are
  given). Each placeholder is expanded to as many placeholder tokens as its encoder produces (nanoVLM / HF
  LLaVA style), wrapped in begin/end markers, so the model replaces token positions one for one.

Bad input never reaches the model: truncated, empty, non-image/non-audio files and oversized inputs raise
``ProcessorError`` (a ``ValueError``) naming the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

IMAGE_TOKEN, AUDIO_TOKEN = "<|image|>", "<|audio|>"
IMAGE_START, IMAGE_END = "<|image_start|>", "<|image_end|>"
AUDIO_START, AUDIO_END = "<|audio_start|>", "<|audio_end|>"
MULTIMODAL_TOKENS = (IMAGE_TOKEN, AUDIO_TOKEN, IMAGE_START, IMAGE_END, AUDIO_START, AUDIO_END)
PROCESSOR_CONFIG = "processor_config.json"


class ProcessorError(ValueError):
    """An input file or sample that cannot be turned into model inputs; the message names the file."""


# ------------------------------------------------------------------------------------------------------------
# Images

ImageInput = str | Path | Image.Image
MAX_PIXELS = 50_000_000  # larger images (a 7071 × 7071 photo) are refused before decoding (decompression bombs)


def load_image(source: ImageInput, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image, refusing bombs, truncated and non-image files with ``ProcessorError``."""
    name = (getattr(source, "filename", "") or "<image>") if isinstance(source, Image.Image) else str(source)
    try:
        with warnings.catch_warnings():
            # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; a bomb is an error here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) if not isinstance(source, Image.Image) else contextlib.nullcontext(source) as im:
                w, h = im.size  # known from the header, before any pixel is decoded
                if w * h > max_pixels:
                    raise ProcessorError(f"{name}: image of {w}x{h} = {w * h:,} pixels exceeds the limit of "
                                         f"{max_pixels:,} pixels (decompression bomb?)")
                im.load()  # decode now, so truncated data fails here and not later inside a DataLoader worker
                img = ImageOps.exif_transpose(im)  # a copy, upright (camera photos store rotation in EXIF)
    except ProcessorError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ProcessorError(f"{name}: decompression bomb rejected: {e}") from e
    except UnidentifiedImageError as e:
        raise ProcessorError(f"{name}: not an image file Pillow can read") from e
    except (OSError, SyntaxError, ValueError, struct.error) as e:  # truncated or corrupt data
        raise ProcessorError(f"{name}: corrupt or truncated image: {e}") from e
    return img




def image_to_tensor(img: Image.Image, size: int, mode: Literal["RGB", "L"], mean: Sequence[float],
                    std: Sequence[float], crop: bool = True, background: tuple[int, int, int] = (255, 255, 255),
                    ) -> Tensor:
    """Resize (shortest edge → ``size``, then centre crop; or squash when ``crop`` is False), normalise.

    Returns (C, size, size) float32 with C = 3 for RGB, 1 for L."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")  # transparent pixels (emoji!) go onto the background, not onto black
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        img = Image.alpha_composite(canvas, rgba)
    img = img.convert(mode)
    if crop:
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    else:
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)  # (H, W, C) or (H, W) in [0, 1]
    x = x[:, :, None] if x.dim() == 2 else x
    x = x.permute(2, 0, 1)  # (C, H, W)
    m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    s = torch.tensor(std, dtype=torch.float32)[:, None, None]
    return (x - m) / s


# ------------------------------------------------------------------------------------------------------------
# Audio: loading and resampling


def _wav_data_chunk(path: Path) -> tuple[int, int] | None:
    """(offset, declared size) of a RIFF/WAVE file's data chunk, or None when the file is not RIFF/WAVE."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        while (chunk := f.read(8)) and len(chunk) == 8:
            cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if cid == b"data":
                return f.tell(), size
            f.seek(size + (size & 1), 1)  # chunks are word-aligned
    return None


def load_audio(source: str | Path, max_seconds: float | None = None, truncate: bool = False) -> tuple[Tensor, int]:
    """Read a WAV/FLAC (anything libsndfile reads) → (mono float32 waveform (N,), sample rate).

    libsndfile quietly returns fewer samples than a truncated file's header declares (as Python's ``wave``
    does), so the data length is checked against the header; empty files are errors. A file longer than
    ``max_seconds`` is refused before it is read (or, with ``truncate``, only its start is read)."""
    import soundfile as sf  # lazy: a core dependency, but only audio needs libsndfile

    path = Path(source)
    if not path.is_file():
        raise ProcessorError(f"{path}: audio file not found")
    try:
        with sf.SoundFile(path) as f:
            declared, sr = f.frames, f.samplerate
            wanted = declared
            if max_seconds is not None and declared > max_seconds * sr:
                if not truncate:
                    raise ProcessorError(f"{path}: clip of {declared / sr:.2f} s is longer than the "
                                         f"{max_seconds:g} s limit (audio_seconds)")
                wanted = math.ceil(max_seconds * sr)
            data = f.read(wanted, dtype="float32", always_2d=True)  # (N, channels)
    except sf.SoundFileError as e:
        raise ProcessorError(f"{path}: cannot read audio (not WAV/FLAC/OGG, or corrupt/truncated): {e}") from e
    if len(data) < wanted:
        raise ProcessorError(f"{path}: truncated audio: header declares {declared} frames, read {len(data)}")
    chunk = _wav_data_chunk(path)
    if chunk is not None:
        offset, size = chunk
        if size not in (0, 0xFFFFFFFF) and offset + size > path.stat().st_size:  # 0 / -1: streamed, size unknown
            raise ProcessorError(f"{path}: truncated WAV: data chunk declares {size} bytes, file has "
                                 f"{path.stat().st_size - offset}")
    if len(data) == 0:
        raise ProcessorError(f"{path}: audio file contains no samples")
    if not np.isfinite(data).all():
        raise ProcessorError(f"{path}: audio contains NaN or infinite samples")
    return torch.from_numpy(data.mean(axis=1)), sr  # down-mix to mono


@lru_cache(maxsize=16)
def _sinc_kernel(orig: int, new: int, width_zc: int, rolloff: float) -> tuple[Tensor, int]:
    """Polyphase windowed-sinc kernels (new, 1, K) for orig → new (both already divided by their gcd)."""
    base = min(orig, new) * rolloff  # low-pass cutoff just below the lower Nyquist rate, in reduced units
    width = math.ceil(width_zc * orig / base)  # taps on each side, in input samples
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None, None] / orig  # (1, 1, K)
    t = torch.arange(0, -new, -1, dtype=torch.float64)[:, None, None] / new + idx  # (new, 1, K): phase offsets
    t = (t * base).clamp(-width_zc, width_zc)
    window = torch.cos(t * math.pi / width_zc / 2) ** 2  # Hann window over ±width_zc zero crossings
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (base / orig)
    return kernel.float(), width


def resample(wave: Tensor, orig_sr: int, new_sr: int, lowpass_width: int = 6, rolloff: float = 0.99) -> Tensor:
    """Band-limited resampling of (..., N) audio (torchaudio's ``sinc_interp_hann``, reimplemented)."""
    if orig_sr == new_sr:
        return wave
    g = math.gcd(int(orig_sr), int(new_sr))
    orig, new = int(orig_sr) // g, int(new_sr) // g
    kernel, width = _sinc_kernel(orig, new, lowpass_width, rolloff)
    shape = wave.shape
    x = wave.reshape(-1, 1, shape[-1]).float()  # (B, 1, N)
    x = F.pad(x, (width, width + orig))
    y = F.conv1d(x, kernel.to(x.device), stride=orig)  # (B, new, N / orig): one row per output phase
    y = y.transpose(1, 2).reshape(x.shape[0], -1)  # interleave the phases → (B, ≈ N · new / orig)
    y = y[:, : math.ceil(new * shape[-1] / orig)]
    return y.reshape(*shape[:-1], -1)


# ------------------------------------------------------------------------------------------------------------
# Audio: Whisper's log-mel front end


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa ``htk=False``): linear below 1 kHz, logarithmic above."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    mels = f / f_sp
    return np.where(f >= min_log_hz, min_log_mel + np.log(np.maximum(f, 1e-10) / min_log_hz) / logstep, mels)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@lru_cache(maxsize=8)
def mel_filterbank(sample_rate: int = 16000, n_fft: int = 400, n_mels: int = 80) -> np.ndarray:
    """Slaney-normalised triangular mel filters (n_mels, n_fft // 2 + 1), float32 — librosa ``filters.mel``
    step for step (float64 maths, float32 storage), which is how Whisper's ``mel_filters.npz`` was made."""
    fft_freqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)  # (F,) bin centre frequencies
    mel_pts = np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(sample_rate / 2.0)), n_mels + 2)
    hz_pts = _mel_to_hz(mel_pts)  # (n_mels + 2,) band edges
    fdiff = np.diff(hz_pts)
    ramps = np.subtract.outer(hz_pts, fft_freqs)  # (n_mels + 2, F)
    weights = np.zeros((n_mels, len(fft_freqs)), dtype=np.float32)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]  # rising edge
        upper = ramps[i + 2] / fdiff[i + 1]  # falling edge
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_pts[2 : n_mels + 2] - hz_pts[:n_mels]))[:, None]  # Slaney: equal area per band
    return weights


def log_mel_spectrogram(wave: Tensor, n_mels: int = 80, n_fft: int = 400, hop_length: int = 160,
                        sample_rate: int = 16000) -> Tensor:
    """Whisper's log-mel of 16 kHz audio (..., N) → (..., n_mels, N // hop_length); floor per clip."""
    window = torch.hann_window(n_fft, device=wave.device)
    stft = torch.stft(wave.float(), n_fft, hop_length, window=window, return_complex=True)  # (..., F, frames+1)
    power = stft[..., :-1].abs() ** 2  # Whisper drops the last frame so frames = N // hop
    filters = torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels)).to(wave.device)
    mel = filters @ power  # (..., n_mels, frames)
    log_spec = mel.clamp(min=1e-10).log10()
    floor = log_spec.amax(dim=(-2, -1), keepdim=True) - 8.0  # 80 dB dynamic range below each clip's peak
    log_spec = torch.maximum(log_spec, floor)
    return (log_spec + 4.0) / 4.0  # roughly into [-1, 1]


# ------------------------------------------------------------------------------------------------------------
# The processor


class TokenizerLike(Protocol):
    """What ``Processor`` needs from a tokenizer (omnigpt's ``tokenizer.py`` provides it)."""

    def encode(self, text: str, allowed_special: Any = ...) -> list[int]: ...
    def token_to_id(self, token: str) -> int | None: ...  # None or KeyError when unknown
    def add_special_tokens(self, tokens: list[str]) -> Any: ...


@dataclass(frozen=True)
class ProcessorConfig:
    """Everything preprocessing needs; saved as ``processor_config.json`` next to the model."""

    # Images
    image_size: int = 224
    image_mode: Literal["RGB", "L"] = "RGB"
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)  # SigLIP / nanoVLM constants; from-scratch encoders adapt
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    crop: bool = True  # shortest edge + centre crop; False squashes the whole image into the square
    background: tuple[int, int, int] = (255, 255, 255)  # under transparent pixels
    max_image_pixels: int = 50_000_000  # decoded size limit; Pillow's own default is 89,478,485
    image_tokens: int = 196  # placeholder tokens per image = what the vision encoder + projector emit
    # Audio
    sample_rate: int = 16000
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 80
    audio_seconds: float = 30.0  # every clip is zero-padded to this length (Whisper's 30 s window)
    truncate_audio: bool = False  # longer clips: cut (True, as Whisper does) or refuse (False)
    audio_tokens: int = 1500  # placeholder tokens per clip (30 s → 3000 frames → conv stride 2 → 1500)
    # Text
    markers: bool = True  # wrap each expansion in <|image_start|> … <|image_end|> (resp. audio)
    eos_token: str | None = "<|endoftext|>"  # appended after each answer
    pad_token: str | None = None  # None: pad with eos (GPT-2 has no pad token); ids under attention_mask 0
    padding_side: Literal["right", "left"] = "right"  # left for batched generation
    max_length: int | None = None  # longer samples are an error (truncating would cut through placeholders)

    def __post_init__(self) -> None:
        channels = 3 if self.image_mode == "RGB" else 1
        if self.image_mode not in ("RGB", "L"):
            raise ValueError(f"image_mode must be 'RGB' or 'L', got {self.image_mode!r}")
        if len(self.image_mean) != channels or len(self.image_std) != channels:
            raise ValueError(f"image_mean/image_std need {channels} values for mode {self.image_mode}")
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}")
        if self.audio_samples < self.n_fft:
            raise ValueError(f"audio_seconds {self.audio_seconds} is shorter than one STFT window "
                             f"({self.n_fft} samples)")
        for key in ("image_size", "max_image_pixels", "image_tokens", "audio_tokens", "sample_rate", "n_mels"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")

    @property
    def audio_samples(self) -> int:
        return round(self.audio_seconds * self.sample_rate)

    @property
    def audio_frames(self) -> int:
        """Mel frames per clip (input_features' last dimension)."""
        return self.audio_samples // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProcessorConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ValueError(f"unknown ProcessorConfig keys {unknown}")
        tuples = {k: tuple(v) for k, v in d.items() if isinstance(v, list)}  # JSON turns tuples into lists
        return cls(**{**d, **tuples})


AudioInput = str | Path | Tensor | np.ndarray | tuple[Any, int]


class Processor:
    """Mixed text + image + audio samples → padded batches of HF-style model inputs.

    ``processor(text, images, audio, answers)``: ``text`` is one string or a list; ``images`` / ``audio`` hold, per
    sample, the items in the order their placeholders appear. With ``answers`` the answer tokens (+ eos) are
    appended and ``labels`` carries them, -100 on the prompt, placeholders and padding (loss on answers only).
    """

    def __init__(self, tokenizer: TokenizerLike, config: ProcessorConfig | None = None) -> None:
        self.tokenizer = tokenizer
        self.config = config or ProcessorConfig()
        specials = [*MULTIMODAL_TOKENS, *(t for t in (self.config.eos_token, self.config.pad_token) if t)]
        missing = [t for t in specials if self._lookup(t) is None]
        if missing:
            tokenizer.add_special_tokens(missing)  # registered once, saved with the tokenizer
        self.ids = {t: self._id(t) for t in specials}
        self._split = re.compile(f"({re.escape(IMAGE_TOKEN)}|{re.escape(AUDIO_TOKEN)})")

    def _lookup(self, token: str) -> int | None:
        try:
            return self.tokenizer.token_to_id(token)  # HF tokenizers return None, omnigpt's raise KeyError
        except KeyError:
            return None

    def _id(self, token: str) -> int:
        i = self._lookup(token)
        if i is None:
            raise ValueError(f"tokenizer does not know the special token {token!r}")
        return int(i)

    @property
    def image_token_id(self) -> int:
        return self.ids[IMAGE_TOKEN]

    @property
    def audio_token_id(self) -> int:
        return self.ids[AUDIO_TOKEN]

    # -- single items --------------------------------------------------------------------------------------
    def image(self, source: ImageInput) -> Tensor:
        """One image → (C, H, W)."""
        c = self.config
        img = load_image(source, c.max_image_pixels)
        return image_to_tensor(img, c.image_size, c.image_mode, c.image_mean, c.image_std, c.crop, c.background)

    def audio(self, source: AudioInput) -> Tensor:
        """One clip (path, (waveform, sample_rate), or a 16 kHz waveform) → (n_mels, audio_frames)."""
        c = self.config
        name = str(source) if isinstance(source, str | Path) else "<waveform>"
        if isinstance(source, str | Path):
            wave, sr = load_audio(source, c.audio_seconds, c.truncate_audio)
        elif isinstance(source, tuple):
            wave, sr = torch.as_tensor(source[0], dtype=torch.float32), int(source[1])
        else:
            wave, sr = torch.as_tensor(source, dtype=torch.float32), c.sample_rate
        if wave.dim() != 1 or wave.numel() == 0:
            raise ProcessorError(f"{name}: expected a non-empty mono waveform, got shape {tuple(wave.shape)}")
        wave = resample(wave, sr, c.sample_rate)
        if wave.numel() > c.audio_samples:
            if not c.truncate_audio:
                raise ProcessorError(f"{name}: clip of {wave.numel() / c.sample_rate:.2f} s is longer than "
                                     f"audio_seconds={c.audio_seconds}")
            wave = wave[: c.audio_samples]
        wave = F.pad(wave, (0, c.audio_samples - wave.numel()))  # Whisper's pad_or_trim: zeros to the window
        return log_mel_spectrogram(wave, c.n_mels, c.n_fft, c.hop_length, c.sample_rate)

    # -- samples and batches -------------------------------------------------------------------------------
    def encode_sample(self, text: str, n_images: int, n_audio: int, index: int = 0) -> list[int]:
        """Token ids of one prompt with every placeholder expanded; counts must match the given media."""
        parts = self._split.split(text)
        found = {IMAGE_TOKEN: parts.count(IMAGE_TOKEN), AUDIO_TOKEN: parts.count(AUDIO_TOKEN)}
        if found[IMAGE_TOKEN] != n_images or found[AUDIO_TOKEN] != n_audio:
            raise ValueError(f"sample {index}: text has {found[IMAGE_TOKEN]} {IMAGE_TOKEN} and {found[AUDIO_TOKEN]} "
                             f"{AUDIO_TOKEN} placeholders, but {n_images} images and {n_audio} audio clips were "
                             f"given")
        c, ids = self.config, []
        for part in parts:
            if part == IMAGE_TOKEN:
                body = [self.ids[IMAGE_TOKEN]] * c.image_tokens
                ids += [self.ids[IMAGE_START], *body, self.ids[IMAGE_END]] if c.markers else body
            elif part == AUDIO_TOKEN:
                body = [self.ids[AUDIO_TOKEN]] * c.audio_tokens
                ids += [self.ids[AUDIO_START], *body, self.ids[AUDIO_END]] if c.markers else body
            elif part:
                ids += self.tokenizer.encode(part)  # plain text: never turned into special tokens
        return ids

    def __call__(self, text: str | Sequence[str], images: Sequence[Any] | None = None,
                 audio: Sequence[Any] | None = None, answers: str | Sequence[str] | None = None,
                 padding_side: Literal["right", "left"] | None = None) -> dict[str, Tensor]:
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        B = len(texts)
        if B == 0:
            raise ValueError("no samples given")
        imgs = ([list(images or [])] if single else list(images)) if images is not None else [[] for _ in texts]
        auds = ([list(audio or [])] if single else list(audio)) if audio is not None else [[] for _ in texts]
        ans = None if answers is None else ([answers] if isinstance(answers, str) else list(answers))
        for what, seq in (("images", imgs), ("audio", auds), ("answers", ans)):
            if seq is not None and len(seq) != B:
                raise ValueError(f"{what} has {len(seq)} entries for {B} samples (one list per sample)")
            if what != "answers" and not all(isinstance(row, list) for row in seq):
                raise ValueError(f"{what}: for a batch of texts give one list per sample, e.g. [[a, b], [], [c]]")

        c = self.config
        rows, label_rows = [], []
        for i in range(B):
            ids = self.encode_sample(texts[i], len(imgs[i]), len(auds[i]), i)
            labels = [-100] * len(ids)
            if ans is not None:
                answer = self.tokenizer.encode(ans[i]) + ([self.ids[c.eos_token]] if c.eos_token else [])
                ids, labels = ids + answer, labels + answer
            if c.max_length is not None and len(ids) > c.max_length:
                raise ValueError(f"sample {i}: {len(ids)} tokens exceed max_length {c.max_length}")
            rows.append(ids)
            label_rows.append(labels)

        T = max(len(r) for r in rows)
        pad_name = c.pad_token or c.eos_token
        pad_id = self.ids[pad_name] if pad_name else 0
        left = (padding_side or c.padding_side) == "left"
        input_ids = torch.full((B, T), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((B, T), dtype=torch.long)
        label_t = torch.full((B, T), -100, dtype=torch.long)
        for i, (ids, labels) in enumerate(zip(rows, label_rows, strict=True)):
            sl = slice(T - len(ids), T) if left else slice(0, len(ids))
            input_ids[i, sl] = torch.tensor(ids, dtype=torch.long)
            attention_mask[i, sl] = 1
            label_t[i, sl] = torch.tensor(labels, dtype=torch.long)

        out = {"input_ids": input_ids, "attention_mask": attention_mask}
        flat_images = [x for row in imgs for x in row]  # in placeholder order, sample after sample
        flat_audio = [x for row in auds for x in row]
        if flat_images:
            out["pixel_values"] = torch.stack([self.image(x) for x in flat_images])  # (N_img, C, H, W)
        if flat_audio:
            out["input_features"] = torch.stack([self.audio(x) for x in flat_audio])  # (N_aud, n_mels, frames)
        if ans is not None:
            out["labels"] = label_t
        return out

    # -- persistence ---------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``processor_config.json`` and the tokenizer's files (its special tokens included)."""
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / PROCESSOR_CONFIG).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        save = getattr(self.tokenizer, "save", None)
        if callable(save):
            save(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, tokenizer: TokenizerLike | None = None) -> Processor:
        """Read ``processor_config.json``; the tokenizer is loaded from the same directory unless given."""
        if tokenizer is None:
            from omnigpt.text.tokenizer import load_tokenizer  # lazy: processors do not need it otherwise

            tokenizer = load_tokenizer(directory)
        path = Path(directory) / PROCESSOR_CONFIG
        try:
            cfg = ProcessorConfig.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a valid processor config: {e}") from e
        return cls(tokenizer, cfg)
