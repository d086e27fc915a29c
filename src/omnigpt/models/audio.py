"""Whisper-style audio encoder (Radford et al. 2022, ``whisper/model.py`` ``AudioEncoder``).

Log-mel frames (B, n_mels, T) from ``processors.log_mel_spectrogram`` → conv1d k3 + GELU → conv1d k3 stride 2 +
GELU (halves time: 10 ms frames → 20 ms tokens) → fixed sinusoidal positions → pre-LN bidirectional blocks
(the decoder's ``Block`` with ``causal=False``, as in the ViT) → final LayerNorm ``ln_post``. Output (B, ⌈T/2⌉, C).

Deliberate deviations from Whisper: clips shorter than ``n_ctx`` tokens are accepted (Whisper asserts exactly
1500), the positional table is a non-persistent buffer (recomputed, not stored in checkpoints), and weights are
initialised GPT-2 style since these encoders are trained from scratch here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnigpt.config import PresetConfig
from omnigpt.models.vision import EncoderOutput, encoder_blocks, init_encoder_weights


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's sinusoidal table (length, channels): sines in the first half of the channels, cosines after."""
    if channels % 2:
        raise ValueError(f"sinusoidal positions need an even width, got {channels}")
    log_timescale_increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-log_timescale_increment * torch.arange(channels // 2))  # (C/2,)
    scaled_time = torch.arange(length)[:, None] * inv_timescales[None, :]  # (length, C/2)
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


@dataclass(frozen=True)
class AudioConfig(PresetConfig):
    """Architecture of a Whisper-style audio encoder. ``n_ctx`` = most output tokens (after the stride-2 conv)."""

    name: str = "custom"
    n_mels: int = 80
    n_ctx: int = 1500  # Whisper: 30 s = 3000 frames → 1500 tokens
    n_layer: int = 4
    n_head: int = 6
    n_embd: int = 384
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head or self.n_embd % 2:
            raise ValueError(f"AudioConfig({self.name!r}): n_embd {self.n_embd} must be even and divisible by "
                             f"n_head {self.n_head}")

    def num_tokens(self, n_frames: int) -> int:
        """Encoder tokens for ``n_frames`` mel frames: the k3/s2/p1 conv gives ⌊(T − 1) / 2⌋ + 1."""
        return (n_frames - 1) // 2 + 1

    @classmethod
    def _presets(cls) -> Mapping[str, AudioConfig]:
        return AUDIO_PRESETS


AUDIO_PRESETS: dict[str, AudioConfig] = {
    # Whisper's encoder sizes (80 mels, 1500 positions); counts exclude the (fixed) sinusoidal table.
    "whisper-tiny": AudioConfig(name="whisper-tiny", n_layer=4, n_head=6, n_embd=384),  # 7,633,920
    "whisper-base": AudioConfig(name="whisper-base", n_layer=6, n_head=8, n_embd=512),  # 19,825,664
    "whisper-small": AudioConfig(name="whisper-small", n_layer=12, n_head=12, n_embd=768),  # 87,011,328
    # Speech commands on 2 CPU cores: clips up to 2 s (200 frames → 100 tokens).
    "audio-small": AudioConfig(name="audio-small", n_ctx=100, n_layer=4, n_head=4, n_embd=128),  # 873,472
    "tiny-audio": AudioConfig(name="tiny-audio", n_ctx=64, n_mels=80, n_layer=2, n_head=2, n_embd=32),  # 36,288
}


class AudioEncoder(nn.Module):
    """Conv stem (k3, then k3 stride 2, GELU after each) + sinusoidal positions + pre-LN blocks + ``ln_post``."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__()
        self.config = config
        C = config.n_embd
        self.conv1 = nn.Conv1d(config.n_mels, C, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(C, C, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(config.n_ctx, C), persistent=False)
        hidden = int(config.mlp_ratio * C)
        self.h = encoder_blocks(config.n_layer, C, config.n_head, hidden, config.dropout, config.layer_norm_epsilon)
        self.ln_post = nn.LayerNorm(C, eps=config.layer_norm_epsilon)
        init_encoder_weights(self, config.n_layer)

    def num_tokens(self, n_frames: int) -> int:
        return self.config.num_tokens(n_frames)

    def forward(self, input_features: Tensor) -> EncoderOutput:
        cfg = self.config
        if input_features.dim() != 3 or input_features.shape[1] != cfg.n_mels:
            raise ValueError(f"input_features must have shape (N, {cfg.n_mels}, frames), "
                             f"got {tuple(input_features.shape)}")
        T = cfg.num_tokens(input_features.shape[-1])
        if cfg.n_ctx < T:
            raise ValueError(f"{input_features.shape[-1]} mel frames give {T} tokens, more than n_ctx {cfg.n_ctx} "
                             f"(at most {2 * cfg.n_ctx} frames = {2 * cfg.n_ctx / 100:g} s)")
        x = F.gelu(self.conv1(input_features.to(self.conv1.weight.dtype)))  # (B, C, frames)
        x = F.gelu(self.conv2(x))  # (B, C, T): stride 2 halves the time axis
        x = x.transpose(1, 2) + self.positional_embedding[:T].to(x.dtype)  # (B, T, C)
        for block in self.h:
            x = block(x)
        x = self.ln_post(x)
        return EncoderOutput(last_hidden_state=x, pooler_output=x.mean(dim=1))
