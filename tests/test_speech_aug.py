"""Speech windows, channel normalisation and augmentation (``omnigpt.data.speech``): their invariants."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from omnigpt.data import speech as sp


def tone_windows(n: int = 3, rate: int = 8000, seconds: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Voiced-like clips (harmonics of 150–250 Hz with a moving envelope) of different lengths in 1 s windows."""
    g = torch.Generator().manual_seed(0)
    size = int(seconds * rate)
    waves, lengths = torch.zeros(n, size), torch.tensor([size // 2 + 700 * i for i in range(n)])
    for i in range(n):
        t = torch.arange(int(lengths[i])) / rate
        f0 = 150 + 50 * i
        x = sum(torch.sin(2 * np.pi * k * f0 * t + float(torch.rand(1, generator=g)) * 6) / k for k in range(1, 15))
        waves[i, : len(t)] = x * (0.6 + 0.4 * torch.sin(2 * np.pi * 3 * t)) * 0.3
    return waves, lengths


def test_mean_normalize_removes_a_fixed_channel_and_keeps_padding_lowest():
    x = torch.randn(2, 80, 100)
    frames = torch.tensor([60, 100])
    channel = torch.randn(1, 80, 1)  # a microphone/telephone colouring: a per-band offset in the log domain
    a, b = sp.mean_normalize(x, frames), sp.mean_normalize(x + channel, frames)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert a[0, :, :60].mean(-1).abs().max() < 1e-5  # each band has mean 0 over the clip's own frames
    assert torch.all(a[0, :, 60:] == a[0, :, :60].min())


def test_window_features_cmn_cancels_a_gain_and_a_filter():
    waves, lengths = tone_windows()
    x = sp.window_features(waves, lengths)
    assert x.shape == (3, 80, 100)
    # A gain is an offset in every band; a fixed FIR filter is (nearly) one per band: both normalise away.
    filtered = torch.nn.functional.conv1d(waves[:, None], torch.tensor([[[0.5, 0.3]]]), padding=1)[:, 0, :-1]
    y = sp.window_features(3.0 * filtered * (torch.arange(waves.shape[1]) < lengths[:, None]), lengths)
    low = torch.from_numpy(sp.mel_centres() < 3500)  # inside the band, where the clips have energy
    raw = sp.window_features(waves, lengths, cmn=False) - sp.window_features(3 * filtered, lengths, cmn=False)
    assert (x - y)[:, low, :40].abs().mean() < 0.05 < raw.abs().mean()


def test_add_noise_level_and_only_inside_the_clip():
    waves, lengths = tone_windows()
    g = torch.Generator().manual_seed(1)
    noisy = sp.add_noise(waves, lengths, g, -50.0, -50.0)
    diff = noisy - waves
    for i, n in enumerate(lengths.tolist()):
        assert torch.all(diff[i, n:] == 0)
        level = diff[i, :n].pow(2).mean().sqrt() / waves[i].abs().max()
        assert float(20 * torch.log10(level)) == pytest.approx(-50.0, abs=0.5)


def test_warp_features_identity_band_edge_and_tempo():
    waves, lengths = tone_windows()
    x = sp.window_features(waves, lengths, cmn=False)
    frames = (lengths * 100 + 7999) // 8000
    g = torch.Generator().manual_seed(2)
    same, f = sp.warp_features(x, frames, g)
    valid = torch.arange(100)[None, None] < frames[:, None, None]
    assert torch.equal(f, frames) and torch.equal(same * valid, x * valid)
    up, _ = sp.warp_features(x, frames, g, freq=(1.2, 1.2))
    hz = torch.from_numpy(sp.mel_centres())
    centroid = lambda z: float(((10 ** (4 * z - 4)).sum(-1) * hz).sum(-1).div((10 ** (4 * z - 4)).sum((-2, -1))).mean())
    assert centroid(up) > 1.05 * centroid(x)  # energy moved up the spectrum
    above = hz > 4000
    assert torch.all(up[:, above][valid.expand(-1, int(above.sum()), -1)] <= x[:, above][valid.expand(
        -1, int(above.sum()), -1)] + 1e-6)  # no energy appears above the telephone band
    slow, f2 = sp.warp_features(x, frames, g, tempo=(1.5, 1.5))
    assert torch.equal(f2, (frames * 1.5).round().long().clamp(max=100))
    assert torch.all(slow[0, :, int(f2[0]):] == x[0].min())


def test_load_windows_trims_and_pads(tmp_path):
    rate = 8000
    clip = np.concatenate([np.zeros(2000), 0.5 * np.sin(np.arange(4000) * 0.3), np.zeros(3000)])
    sf.write(tmp_path / "a.wav", clip, rate, subtype="PCM_16")
    waves, lengths = sp.load_windows([str(tmp_path / "a.wav")], 1.0, rate)
    assert waves.shape == (1, 8000) and 4000 <= int(lengths[0]) <= 4000 + 2 * 400 + 160
    assert torch.all(waves[0, int(lengths[0]):] == 0)
