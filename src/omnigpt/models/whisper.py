"""Whisper (Radford et al. 2022, "Robust Speech Recognition via Large-Scale Weak Supervision") as an encoder-decoder.

Reading order: ``WhisperConfig`` + presets, the encoder (``WhisperEncoder``: the audio encoder of ``models/audio.py``
with its position table stored), cross-attention, the decoder block, ``DecoderState`` (the caches), ``Whisper``.

* Encoder: log-mel (B, 80, 3000) → conv1d k3 + GELU → conv1d k3 stride 2 + GELU → + sinusoidal positions →
  pre-LN bidirectional blocks (``models.gpt.Block`` with ``causal=False``, built by ``vision.encoder_blocks``) →
  ``ln_post`` → (B, 1500, C).
* Decoder: token embedding ``wte`` + learned positions ``wpe`` (448) → pre-LN blocks, each causal self-attention
  (``models.gpt.CausalSelfAttention``, KV-cached), cross-attention to the encoder output (its K/V computed once per
  audio window and kept in the state), MLP → ``ln_f`` → logits against ``wte`` (the output projection is tied).

Names follow omnigpt's GPT-2 names (``ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj``); the
cross-attention adds ``ln_x`` and ``xattn.c_q`` / ``xattn.c_kv`` / ``xattn.c_proj``. Deliberate deviations from
OpenAI's ``whisper/model.py``: Q, K, V are one fused ``c_attn`` (as in CTranslate2's converted checkpoints), so K
carries a bias that pretrained weights set to zero (Whisper's key projection has none); cross-attention K and V are
fused into ``c_kv`` the same way. The encoder's position table is a stored buffer (checkpoints carry it; CTranslate2
stores it in fp16) rather than recomputed. The decoding rules (prompts, suppressed tokens, beam search) live in
``generate/whisper.py``; the CTranslate2 key table in ``checkpoints/ctranslate2.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnigpt.config import GPTConfig, PresetConfig
from omnigpt.kernels.matmul import Linear
from omnigpt.models.audio import AudioConfig, AudioEncoder, sinusoids
from omnigpt.models.gpt import MLP, CausalSelfAttention
from omnigpt.models.kv_cache import KVCache
from omnigpt.models.vision import init_encoder_weights

MODEL_TYPE = "omnigpt-whisper"

# ------------------------------------------------------------------------------------------------------------
# Config and presets


@dataclass(frozen=True)
class WhisperConfig(PresetConfig):
    """Architecture of a Whisper model, plus the decoding facts its checkpoint carries (CTranslate2's config.json)."""

    model_type = MODEL_TYPE
    name: str = "custom"
    n_mels: int = 80
    n_audio_ctx: int = 1500  # encoder positions: 30 s = 3000 mel frames → 1500 after the stride-2 conv
    n_audio_layer: int = 4
    n_audio_head: int = 6
    n_text_ctx: int = 448  # decoder positions
    n_text_layer: int = 4
    n_text_head: int = 6
    n_embd: int = 384  # one width for encoder and decoder (every released Whisper)
    n_vocab: int = 51864  # 51864 for English-only models, 51865+ for multilingual ones
    layer_norm_epsilon: float = 1e-5
    # Decoding facts (generate/whisper.py): tokens never sampled, tokens not sampled first, language tokens, and
    # the cross-attention heads that align with time (layer, head) — CTranslate2's config.json names.
    suppress_ids: tuple[int, ...] = ()
    suppress_ids_begin: tuple[int, ...] = ()
    lang_ids: tuple[int, ...] = ()
    alignment_heads: tuple[tuple[int, int], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for width, heads in ((self.n_embd, self.n_audio_head), (self.n_embd, self.n_text_head)):
            if width % heads or width % 2:
                raise ValueError(f"WhisperConfig({self.name!r}): n_embd {width} must be even and divisible by "
                                 f"the head count {heads}")

    @property
    def is_multilingual(self) -> bool:
        """OpenAI's rule: multilingual vocabularies have 51865 tokens or more (language tokens after <|sot|>)."""
        return self.n_vocab >= 51865

    def audio_config(self) -> AudioConfig:
        return AudioConfig(name=f"{self.name}-encoder", n_mels=self.n_mels, n_ctx=self.n_audio_ctx,
                           n_layer=self.n_audio_layer, n_head=self.n_audio_head, n_embd=self.n_embd,
                           layer_norm_epsilon=self.layer_norm_epsilon)

    def text_config(self) -> GPTConfig:
        """The decoder's layer settings as a GPTConfig, so its self-attention and MLP are the GPT ones."""
        return GPTConfig(name=f"{self.name}-decoder", vocab_size=self.n_vocab, block_size=self.n_text_ctx,
                         n_layer=self.n_text_layer, n_head=self.n_text_head, n_embd=self.n_embd, activation="gelu",
                         layer_norm_epsilon=self.layer_norm_epsilon, causal=True)

    @classmethod
    def _presets(cls) -> Mapping[str, WhisperConfig]:
        return WHISPER_PRESETS


WHISPER_PRESETS: dict[str, WhisperConfig] = {
    # OpenAI's sizes; counts exclude the encoder's fixed position table (tied output projection counted once).
    "whisper-tiny.en": WhisperConfig(name="whisper-tiny.en"),  # 37,188,864
    "whisper-base": WhisperConfig(name="whisper-base", n_audio_layer=6, n_audio_head=8, n_text_layer=6,
                                  n_text_head=8, n_embd=512, n_vocab=51865),  # 71,835,136
    # Random and small, for tests: the real vocabulary (so the real tokenizer's special tokens work), 30 s windows.
    "whisper-tiny-test": WhisperConfig(name="whisper-tiny-test", n_audio_layer=2, n_audio_head=2, n_text_layer=2,
                                       n_text_head=2, n_embd=32, suppress_ids_begin=(220, 50256)),  # 1,744,320
}


# ------------------------------------------------------------------------------------------------------------
# Encoder


class WhisperEncoder(AudioEncoder):
    """``models.audio.AudioEncoder`` (conv stem, sinusoidal positions, pre-LN blocks, ``ln_post``) whose position
    table is a persistent buffer, so a checkpoint's stored table (fp16 in CTranslate2 files) is used as is."""

    def __init__(self, config: AudioConfig) -> None:
        super().__init__(config)
        self.register_buffer("positional_embedding", sinusoids(config.n_ctx, config.n_embd), persistent=True)


# ------------------------------------------------------------------------------------------------------------
# Decoder


class CrossAttention(nn.Module):
    """Multi-head attention from decoder queries to the encoder output; K and V are projected once per window."""

    def __init__(self, n_embd: int, n_head: int) -> None:
        super().__init__()
        self.n_head, self.head_size = n_head, n_embd // n_head
        self.c_q = Linear(n_embd, n_embd)
        self.c_kv = Linear(n_embd, 2 * n_embd)  # fused K, V (K's bias is zero in Whisper's weights)
        self.c_proj = Linear(n_embd, n_embd)

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """memory (B, S, C) → K, V each (B, nh, S, hs)."""
        B, S, C = memory.shape
        k, v = self.c_kv(memory).split(C, dim=2)
        k = k.view(B, S, self.n_head, self.head_size).transpose(1, 2)
        v = v.view(B, S, self.n_head, self.head_size).transpose(1, 2)
        return k, v

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor]) -> Tensor:
        B, T, C = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k, v = kv  # (B or 1, nh, S, hs): every query sees every audio position
        if k.shape[0] != B:
            k, v = k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)  # beams of one audio share its K/V
        y = F.scaled_dot_product_attention(q, k, v)  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class DecoderBlock(nn.Module):
    """Pre-LN: x + SelfAttn(LN(x)), then x + CrossAttn(LN(x), audio), then x + MLP(LN(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        eps = config.layer_norm_epsilon
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=eps)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_x = nn.LayerNorm(config.n_embd, eps=eps)
        self.xattn = CrossAttention(config.n_embd, config.n_head)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, q_pos: Tensor, cache: KVCache | None, kv: tuple[Tensor, Tensor]) -> Tensor:
        x = x + self.attn(self.ln_1(x), q_pos, None, cache)
        x = x + self.xattn(self.ln_x(x), kv)
        return x + self.mlp(self.ln_2(x))


@dataclass
class DecoderState:
    """What decoding one audio window keeps between steps: per layer, the self-attention KV cache (grows by one
    position per token) and the cross-attention K/V of the encoder output (fixed)."""

    self_kv: list[KVCache]
    cross_kv: list[tuple[Tensor, Tensor]]

    @property
    def pos(self) -> int:
        return self.self_kv[0].pos

    def reorder(self, index: Tensor) -> None:
        """Keep rows ``index`` (beam search: each new beam continues the row it came from). Cross K/V with one
        row (all beams of one audio) are shared and stay as they are."""
        for cache in self.self_kv:
            cache.reorder(index)
        self.cross_kv = [kv if kv[0].shape[0] == 1 else (kv[0][index], kv[1][index]) for kv in self.cross_kv]


class WhisperDecoder(nn.Module):
    """Token + learned position embeddings, ``n_text_layer`` decoder blocks, ``ln_f``; logits against ``wte``."""

    def __init__(self, config: WhisperConfig) -> None:
        super().__init__()
        gpt = config.text_config()
        self.wte = nn.Embedding(config.n_vocab, config.n_embd)
        self.wpe = nn.Embedding(config.n_text_ctx, config.n_embd)
        self.h = nn.ModuleList(DecoderBlock(gpt, i) for i in range(config.n_text_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def forward(self, tokens: Tensor, state: DecoderState) -> Tensor:
        """tokens (B, T) following the ``state.pos`` tokens already cached → logits (B, T, V)."""
        past = state.pos
        q_pos = torch.arange(past, past + tokens.shape[1], device=tokens.device)  # (T,)
        x = self.wte(tokens) + self.wpe(q_pos)[None]  # (B, T, C)
        for block, cache, kv in zip(self.h, state.self_kv, state.cross_kv, strict=True):
            x = block(x, q_pos, cache, kv)
        x = self.ln_f(x)
        return F.linear(x, self.wte.weight)  # (B, T, V): the tied output projection


# ------------------------------------------------------------------------------------------------------------
# The model


class Whisper(nn.Module):
    """Encoder + decoder. ``encode`` a (B, n_mels, 3000) window once, ``new_state`` for it, then ``decode`` tokens
    step by step (or all at once: ``forward`` is teacher-forced logits for (mel, tokens))."""

    def __init__(self, config: WhisperConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = WhisperEncoder(config.audio_config())
        self.decoder = WhisperDecoder(config)
        init_encoder_weights(self.decoder, config.n_text_layer)  # random init (tests); checkpoints overwrite it
        nn.init.normal_(self.decoder.wte.weight, std=0.02)
        nn.init.normal_(self.decoder.wpe.weight, std=0.01)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, mel: Tensor) -> Tensor:
        """Log-mel (B, n_mels, frames ≤ 2·n_audio_ctx) → audio features (B, ⌈frames/2⌉, C)."""
        return self.encoder(mel).last_hidden_state

    def new_state(self, audio_features: Tensor, max_len: int | None = None) -> DecoderState:
        """Empty self-attention caches and each layer's cross-attention K/V of ``audio_features`` (B, S, C)."""
        max_len = max_len or self.config.n_text_ctx
        return DecoderState(self_kv=[KVCache(max_len) for _ in self.decoder.h],
                            cross_kv=[block.xattn.project_kv(audio_features) for block in self.decoder.h])

    def decode(self, tokens: Tensor, state: DecoderState) -> Tensor:
        """Append ``tokens`` (B, T) to the decoding ``state`` → logits (B, T, V) of the next token at each position."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must have shape (batch, seq_len), got {tuple(tokens.shape)}")
        if state.pos + tokens.shape[1] > self.config.n_text_ctx:
            raise ValueError(f"{state.pos} cached + {tokens.shape[1]} new tokens exceed the decoder's "
                             f"{self.config.n_text_ctx} positions")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.config.n_vocab):
            raise ValueError(f"token ids must be in [0, {self.config.n_vocab})")
        return self.decoder(tokens, state)

    def forward(self, mel: Tensor, tokens: Tensor) -> Tensor:
        """Teacher-forced logits (B, T, V) for ``tokens`` (B, T) given log-mel ``mel`` (B, n_mels, frames)."""
        return self.decode(tokens, self.new_state(self.encode(mel)))


__all__ = ["MODEL_TYPE", "WHISPER_PRESETS", "CrossAttention", "DecoderBlock", "DecoderState", "Whisper",
           "WhisperConfig", "WhisperDecoder", "WhisperEncoder"]
