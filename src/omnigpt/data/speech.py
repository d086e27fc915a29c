"""Speech training helpers for short telephone-band clips: fixed windows, log-mels with channel normalisation, and
the augmentations that close part of the gap between synthesised and recorded speech.

A model trained only on synthesised speech (``speech_sources.prepare_synth_speech``) and tested on a human recording
meets three differences that these functions address, each applied per training step so every epoch differs:

* **Silence.** espeak-ng and flite write digital zeros between words; a recording has a noise floor (the Asterisk
  prompts: ~-70 dB below the peak in their quietest 5% of 20 ms frames). ``add_noise`` puts white noise at a random
  level under each clip's own samples.
* **Channel colouring.** A microphone and telephone chain is a fixed filter: an additive per-band offset in the log
  domain. ``mean_normalize`` removes each mel band's mean over the clip's frames (cepstral mean normalisation,
  Atal 1974; Kaldi's ``apply-cmvn --norm-vars=false`` per utterance). It is a front-end step, applied alike to
  training and test clips.
* **Speaker and rate.** ``warp_features`` scales the frequency axis by α per clip (vocal-tract-length
  perturbation, Jaitly & Hinton 2013, on the log-mel bands: pitch and formants move together, the duration does
  not) and the time axis by β (tempo), keeping the telephone band edge.

Shapes: waveforms (N, S) at ``rate`` Hz, zero-padded after ``lengths`` samples; log-mels (N, n_mels, T) in
Whisper's scaling with ``frames`` (N,) valid frames (100 per second).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from omnigpt.text.processors import _hz_to_mel, _mel_to_hz, load_audio, log_mel_spectrogram, resample

FeatureAugment = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def trim_silence(wave: Tensor, sr: int, floor_db: float = -35.0, pad_s: float = 0.05) -> Tensor:
    """Cut leading/trailing audio quieter than ``floor_db`` below the clip's peak (20 ms RMS frames), keeping
    ``pad_s`` either side — applied alike to synthesised and real clips, so their silences do not differ."""
    hop = max(1, int(0.02 * sr))
    n = len(wave) // hop
    if n == 0:
        return wave
    rms = wave[: n * hop].reshape(n, hop).pow(2).mean(1).sqrt()
    loud = (rms > rms.max() * 10 ** (floor_db / 20)).nonzero().flatten()
    if len(loud) == 0:
        return wave
    pad = int(pad_s * sr)
    return wave[max(0, int(loud[0]) * hop - pad) : min(len(wave), (int(loud[-1]) + 1) * hop + pad)]


def load_windows(paths: Sequence[str], seconds: float, rate: int = 8000) -> tuple[Tensor, Tensor]:
    """(N, seconds · rate) trimmed waveforms, zero-padded, and their lengths in samples. Every file must already be
    at ``rate`` (the clips are kept in memory, so features can be recomputed with fresh noise every step)."""
    size = int(seconds * rate)
    waves, lengths = torch.zeros(len(paths), size), torch.zeros(len(paths), dtype=torch.long)
    for i, p in enumerate(paths):
        wave, sr = load_audio(p)
        if sr != rate:
            raise ValueError(f"{p}: expected {rate} Hz audio, got {sr} Hz")
        wave = trim_silence(wave, sr)[:size]
        waves[i, : len(wave)], lengths[i] = wave, len(wave)
    return waves, lengths


def mean_normalize(x: Tensor, frames: Tensor) -> Tensor:
    """Subtract each mel band's mean over the clip's first ``frames`` frames; padding frames take the clip's
    minimum (silence stays the lowest value). A per-band constant added to a clip leaves the output unchanged."""
    valid = torch.arange(x.shape[-1], device=x.device)[None, None, :] < frames[:, None, None]  # (N, 1, T)
    mean = (x * valid).sum(-1, keepdim=True) / valid.sum(-1, keepdim=True).clamp(min=1)  # (N, M, 1)
    x = x - mean
    low = x.masked_fill(~valid, float("inf")).amin(dim=(1, 2), keepdim=True)  # (N, 1, 1)
    return torch.where(valid, x, low)


def window_features(waves: Tensor, lengths: Tensor, rate: int = 8000, cmn: bool = True,
                    augment: FeatureAugment | None = None) -> Tensor:
    """Whisper log-mels (N, 80, S / rate · 100) of the windows (resampled to 16 kHz), optionally warped by
    ``augment(x, frames)`` and then mean-normalised per band (``cmn``)."""
    samples = waves.shape[-1] * 16000 // rate
    x = log_mel_spectrogram(resample(waves, rate, 16000)[..., :samples])
    frames = ((lengths * 100 + rate - 1) // rate).clamp(1, x.shape[-1])  # 100 frames per second, rounded up
    if augment is not None:
        x, frames = augment(x, frames)
    return mean_normalize(x, frames) if cmn else x


def add_noise(waves: Tensor, lengths: Tensor, generator: torch.Generator, low_db: float = -75.0,
              high_db: float = -40.0) -> Tensor:
    """White noise at a random level in [``low_db``, ``high_db``] below each clip's peak, over the clip's own
    samples only (the padding stays zero, as it does for the test clips)."""
    n, size = waves.shape
    level = 10 ** ((low_db + (high_db - low_db) * torch.rand(n, 1, generator=generator)) / 20)  # (N, 1)
    peak = waves.abs().amax(1, keepdim=True)
    inside = torch.arange(size)[None, :] < lengths[:, None]
    return waves + torch.randn(n, size, generator=generator) * level * peak * inside


def mel_centres(n_mels: int = 80, sample_rate: int = 16000) -> np.ndarray:
    """Centre frequency (Hz) of each band of ``processors.mel_filterbank`` (Slaney mel scale)."""
    mel = np.linspace(_hz_to_mel(np.array(0.0)), _hz_to_mel(np.array(sample_rate / 2.0)), n_mels + 2)
    return _mel_to_hz(mel)[1:-1]


def warp_features(x: Tensor, frames: Tensor, generator: torch.Generator, freq: tuple[float, float] = (1.0, 1.0),
                  tempo: tuple[float, float] = (1.0, 1.0), band_hz: float = 4000.0) -> tuple[Tensor, Tensor]:
    """Per clip, every frequency × α (α ~ U(``freq``); band j reads the source at f_j / α, interpolated between
    bands) and the valid frames stretched × β (β ~ U(``tempo``), clipped to the window). Bands above ``band_hz``
    keep no more energy than they had: the telephone channel's edge does not move. α = β = 1 is the identity."""
    N, M, T = x.shape
    floor = x.amin(dim=(1, 2))  # (N,) each clip's silence level fills what the stretch leaves empty
    out = floor[:, None, None].expand(N, M, T).clone()
    alpha = freq[0] + (freq[1] - freq[0]) * torch.rand(N, generator=generator)
    beta = tempo[0] + (tempo[1] - tempo[0]) * torch.rand(N, generator=generator)
    hz = mel_centres(M)
    above = torch.from_numpy(hz > band_hz)
    new_frames = (frames * beta).round().long().clamp(1, T)
    for i in range(N):
        src = torch.from_numpy(np.interp(hz / float(alpha[i]), hz, np.arange(M))).float()  # (M,) fractional
        lo = src.floor().long().clamp(0, M - 1)
        w = (src - lo)[:, None]
        x0 = x[i, :, : int(frames[i])]  # (M, n)
        xi = x0[lo] * (1 - w) + x0[(lo + 1).clamp(max=M - 1)] * w
        xi[above] = torch.minimum(xi[above], x0[above])
        n = int(new_frames[i])
        if n != x0.shape[-1]:
            xi = F.interpolate(xi[None], size=n, mode="linear", align_corners=True)[0]
        out[i, :, :n] = xi
    return out, new_frames


__all__ = ["add_noise", "load_windows", "mean_normalize", "mel_centres", "trim_silence", "warp_features",
           "window_features"]
