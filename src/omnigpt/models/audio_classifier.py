"""Audio classification (keyword spotting): an audio encoder, mean pooling over time, a small head.

Log-mel frames (B, n_mels, T) → encoder → (B, ⌈T/2⌉, C) → mean over tokens → (B, C) → head → logits (B, K).
Two encoders, one model:

* ``encoder="scratch"``: ``models.audio.AudioEncoder`` (Whisper's architecture at a small width, its sinusoidal
  position table recomputed), trained from scratch with the head — the keyword-spotting transformer of
  Berg et al. 2021 ("Keyword Transformer"), with Whisper's conv stem in place of its patching.
* ``encoder="whisper"``: ``models.whisper.WhisperEncoder`` (the position table stored, as in pretrained
  checkpoints); the task loads a pretrained Whisper's encoder weights into it and trains the head only (the
  frozen-features recipe of SUPERB, Yang et al. 2021, with the last layer instead of a learned layer mix).

The encoder runs without autograd whenever none of its parameters requires a gradient (frozen), so a frozen
Whisper costs a forward pass per step and no activation memory (or none at all: ``pooled`` is the encoder + pooling
alone, so a task can cache it and train the head on the cached vectors). The head is ``head_hidden`` = 0: one Linear
C → K; > 0: Linear → GELU → dropout → Linear (a two-layer MLP on the pooled vector). Its last layer starts at zero,
so the first logits are uniform and the first loss is ln K (the ViT paper's head init).

The config also carries what a saved classifier needs to read a raw recording the way it was trained (sample rate,
window length, whether log-mels are mean-normalised per band): ``apps.voice_commands.data.clip_features`` reads them.
Deliberate deviation from Whisper: clips are 1–2 s windows, not zero-padded 30 s ones; the pretrained encoder sees
only the first ⌈T/2⌉ of its 1500 positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnigpt.config import PresetConfig
from omnigpt.models.audio import AudioConfig, AudioEncoder
from omnigpt.models.whisper import WhisperEncoder

MODEL_TYPE = "omnigpt-audio-classifier"
ENCODERS = ("scratch", "whisper")


@dataclass(frozen=True)
class AudioClassifierConfig(PresetConfig):
    """An audio encoder + a classifier over ``labels``, and the front end its inputs need."""

    model_type = MODEL_TYPE
    name: str = "custom"
    audio: AudioConfig = AudioConfig()
    labels: tuple[str, ...] = ()
    encoder: str = "scratch"  # "scratch" (AudioEncoder) | "whisper" (WhisperEncoder: stored positions)
    head_hidden: int = 0  # 0: a linear head; > 0: an MLP with this hidden width
    head_dropout: float = 0.0
    sample_rate: int = 8000  # the rate clips are read at (the telephone band of the Asterisk prompts)
    seconds: float = 1.5  # window: trimmed clips are cut or zero-padded to this length
    cmn: bool = True  # log-mels mean-normalised per band over the clip (data.speech.mean_normalize)
    pretrained: str | None = None  # where the encoder weights came from (e.g. "whisper-tiny.en"), for the record

    def __post_init__(self) -> None:
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"AudioClassifierConfig({self.name!r}): needs at least 2 distinct labels, "
                             f"got {self.labels}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"AudioClassifierConfig({self.name!r}): encoder must be one of {ENCODERS}, "
                             f"got {self.encoder!r}")
        if self.head_hidden < 0 or not 0 <= self.head_dropout < 1 or self.seconds <= 0 or self.sample_rate <= 0:
            raise ValueError(f"AudioClassifierConfig({self.name!r}): head_hidden >= 0, 0 <= head_dropout < 1, "
                             f"seconds > 0 and sample_rate > 0 are required")
        if self.audio.num_tokens(self.frames) > self.audio.n_ctx:
            raise ValueError(f"AudioClassifierConfig({self.name!r}): a {self.seconds} s window gives "
                             f"{self.audio.num_tokens(self.frames)} tokens, more than the encoder's n_ctx "
                             f"{self.audio.n_ctx}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def frames(self) -> int:
        """Log-mel frames of one window (100 per second)."""
        return round(self.seconds * 100)


@dataclass
class AudioClassifierOutput:
    logits: Tensor  # (B, num_labels)
    features: Tensor  # (B, C): the pooled encoder output the head reads
    loss: Tensor | None = None


class AudioClassifier(nn.Module):
    """``encoder`` → mean over tokens → ``head`` (see the module docstring)."""

    def __init__(self, config: AudioClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = (WhisperEncoder if config.encoder == "whisper" else AudioEncoder)(config.audio)
        C, K = config.audio.n_embd, config.num_labels
        if config.head_hidden:
            self.head = nn.Sequential(nn.Linear(C, config.head_hidden), nn.GELU(), nn.Dropout(config.head_dropout),
                                      nn.Linear(config.head_hidden, K))
        else:
            self.head = nn.Sequential(nn.Dropout(config.head_dropout), nn.Linear(C, K))
        nn.init.zeros_(self.head[-1].weight)  # uniform first logits: loss starts at ln K
        nn.init.zeros_(self.head[-1].bias)

    def encoder_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.encoder.parameters())

    def pooled(self, input_features: Tensor) -> Tensor:
        """The vector the head reads: the encoder's output averaged over tokens, (B, n_mels, T) → (B, C). A frozen
        encoder's pooled vectors can be computed once and cached (the audio-classify task's feature cache)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen()):
            hidden = self.encoder(input_features).last_hidden_state  # (B, T', C)
        return hidden.mean(dim=1)  # (B, C)

    def forward(self, input_features: Tensor, labels: Tensor | None = None) -> AudioClassifierOutput:
        feats = self.pooled(input_features)  # (B, C)
        logits = self.head(feats)  # (B, K)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return AudioClassifierOutput(logits=logits, features=feats, loss=loss)


__all__ = ["ENCODERS", "MODEL_TYPE", "AudioClassifier", "AudioClassifierConfig", "AudioClassifierOutput"]
