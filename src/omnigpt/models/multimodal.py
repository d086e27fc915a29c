"""Images and audio in the GPT decoder: projectors, placeholder fusion, ``MultimodalGPT``.

The LLaVA-1.5 / nanoVLM recipe ("everything is a sequence"): an encoder (``ViT``,
``AudioEncoder``) turns each image / clip into a sequence of vectors, a projector (LLaVA's linear or
``mlp2x_gelu``) maps them to the decoder's width, and they replace the ``<|image|>`` / ``<|audio|>`` placeholder
tokens that the processor already expanded to one token per vector. The decoder is omnigpt's unchanged ``GPT``
fed with ``inputs_embeds``; several images and clips per sample interleave freely with text.

* The projector may first concatenate ``merge`` neighbouring vectors (nanoVLM's pixel shuffle in one dimension,
  the token-merging step of Qwen2-Audio-like models): ``merge``-times fewer decoder tokens per image or clip.
* Labels at placeholder positions are forced to -100; the processor puts -100 on the prompt, so the loss covers
  only the answer tokens.
* A placeholder count that does not match the media raises ``ValueError`` with both counts.
* The vision tower is a ``ViT`` trained with the decoder, or a pretrained convolutional tower
  (``vision_tower="mobilenet-v2"``: torchvision's ImageNet MobileNetV2, its 7×7×1280 last feature map read as 49
  tokens, or average-pooled to a ``vision_grid``² grid). A pretrained tower stays in eval mode whatever
  ``train()`` says: its BatchNorm statistics are the ImageNet ones, and LLaVA's recipe keeps the tower frozen.
* Placeholder ids may lie past the decoder's vocabulary (``added_tokens``: a pretrained tokenizer's new ones, as
  LLaVA's own code marks images with ``IMAGE_TOKEN_INDEX = -200``, an id no embedding row has): their positions
  are always overwritten, so the pretrained decoder keeps its vocabulary and its logits unchanged.
* Saving and loading go through ``omnigpt.checkpoints.pretrained`` (``model_type: omnigpt-multimodal``).

Contrastive alignment (CLIP) lives in ``models/contrastive.py``: a separate model family with its own loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from omnigpt.config import GPTConfig, PresetConfig
from omnigpt.models.audio import AudioConfig, AudioEncoder
from omnigpt.models.gpt import GPT, GPTOutput
from omnigpt.models.kv_cache import KVCache
from omnigpt.models.mobilenet import MobileNetV2, MobileNetV2Config, MobileNetV2Encoder
from omnigpt.models.vision import EncoderOutput, VisionConfig, ViT

MODEL_TYPE = "omnigpt-multimodal"

# ------------------------------------------------------------------------------------------------------------
# Projector


@dataclass(frozen=True)
class ProjectorConfig:
    """``kind``: "linear" (LLaVA-1) or "mlp" (LLaVA-1.5's Linear-GELU-Linear); ``merge``: vectors per token."""

    kind: Literal["linear", "mlp"] = "mlp"
    merge: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "mlp"):
            raise ValueError(f"projector kind must be 'linear' or 'mlp', got {self.kind!r}")
        if self.merge < 1:
            raise ValueError(f"projector merge must be >= 1, got {self.merge}")


class Projector(nn.Module):
    """(N, T, C_enc) encoder output → (N, T / merge, C_dec) decoder embeddings."""

    def __init__(self, in_dim: int, out_dim: int, config: ProjectorConfig) -> None:
        super().__init__()
        self.merge = config.merge
        d = in_dim * config.merge
        if config.kind == "linear":
            self.net = nn.Sequential(nn.Linear(d, out_dim))
        else:
            self.net = nn.Sequential(nn.Linear(d, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def num_tokens(self, n: int) -> int:
        return n // self.merge

    def forward(self, x: Tensor) -> Tensor:
        N, T, C = x.shape
        if T % self.merge:
            raise ValueError(f"projector merge {self.merge} does not divide the {T} encoder tokens")
        x = x.reshape(N, T // self.merge, C * self.merge)  # concatenate `merge` neighbours: (N, T/m, m·C)
        return self.net(x)


# ------------------------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class MultimodalConfig(PresetConfig):
    """A GPT decoder + optional image and audio encoders with their projectors and placeholder token ids."""

    model_type = MODEL_TYPE
    name: str = "custom"
    text: GPTConfig = field(default_factory=GPTConfig)
    vision: VisionConfig | MobileNetV2Config | None = None
    vision_tower: Literal["vit", "mobilenet-v2"] = "vit"  # which kind ``vision`` configures
    vision_grid: int | None = None  # mobilenet-v2: average-pool the feature map to grid × grid tokens (None: all)
    audio: AudioConfig | None = None
    vision_projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    audio_projector: ProjectorConfig = field(default_factory=lambda: ProjectorConfig(merge=2))
    image_token_id: int | None = None  # from the tokenizer: Processor(...).image_token_id
    audio_token_id: int | None = None
    audio_frames: int = 3000  # mel frames per (padded) clip: fixes the tokens per clip
    # Tokens a pretrained decoder's tokenizer gained for the media (ids vocab_size … vocab_size + added_tokens - 1):
    # allowed as placeholder ids only, since their positions are always overwritten.
    added_tokens: int = 0

    def __post_init__(self) -> None:
        for what, tid in (("image_token_id", self.image_token_id), ("audio_token_id", self.audio_token_id)):
            if tid is not None and not 0 <= tid < self.text.vocab_size + self.added_tokens:
                raise ValueError(f"MultimodalConfig({self.name!r}): {what} {tid} is outside the decoder's "
                                 f"vocabulary of {self.text.vocab_size} (+ {self.added_tokens} added tokens)")
        kind = {"vit": VisionConfig, "mobilenet-v2": MobileNetV2Config}.get(self.vision_tower)
        if kind is None:
            raise ValueError(f"vision_tower must be 'vit' or 'mobilenet-v2', got {self.vision_tower!r}")
        if self.vision is not None and not isinstance(self.vision, kind):
            raise ValueError(f"vision_tower {self.vision_tower!r} needs a {kind.__name__}, got "
                             f"{type(self.vision).__name__}")
        if self.vision_grid is not None and (self.vision_tower != "mobilenet-v2" or self.vision_grid < 1):
            raise ValueError(f"vision_grid {self.vision_grid}: a positive grid side, for the mobilenet-v2 tower only")
        if self.vision is not None and self.vision_patches % self.vision_projector.merge:
            raise ValueError(f"vision projector merge {self.vision_projector.merge} does not divide "
                             f"{self.vision_patches} patches")
        if self.audio is not None:
            n = self.audio.num_tokens(self.audio_frames)
            if n > self.audio.n_ctx or n % self.audio_projector.merge:
                raise ValueError(f"audio_frames {self.audio_frames} give {n} encoder tokens: must be <= n_ctx "
                                 f"{self.audio.n_ctx} and divisible by merge {self.audio_projector.merge}")

    @property
    def vision_patches(self) -> int:
        """Vectors the vision tower emits per image (ViT patches; MobileNet map positions, after pooling)."""
        if self.vision is None:
            return 0
        if isinstance(self.vision, MobileNetV2Config):
            return self.vision_grid ** 2 if self.vision_grid else self.vision.num_tokens
        return self.vision.num_patches

    @property
    def image_tokens(self) -> int:
        """Decoder positions per image."""
        return self.vision_patches // self.vision_projector.merge

    @property
    def audio_tokens(self) -> int:
        """Decoder positions per clip."""
        return 0 if self.audio is None else self.audio.num_tokens(self.audio_frames) // self.audio_projector.merge

    def processor_kwargs(self) -> dict[str, Any]:
        """The ``ProcessorConfig`` fields this model fixes (kept here so models/ need not import processors)."""
        kw: dict[str, Any] = {"audio_seconds": self.audio_frames / 100.0}  # 100 frames/s at hop 160, 16 kHz
        if self.audio is not None:
            kw |= {"audio_tokens": self.audio_tokens, "n_mels": self.audio.n_mels}
        if self.vision is not None:
            kw |= {"image_tokens": self.image_tokens, **image_processor_kwargs(self.vision)}
        return kw

    @classmethod
    def _presets(cls) -> Mapping[str, MultimodalConfig]:
        return MULTIMODAL_PRESETS

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> MultimodalConfig:
        """The one field the types alone cannot rebuild: ``vision`` is the config class ``vision_tower`` names."""
        d = dict(d)
        if isinstance(d.get("vision"), Mapping):
            vision_cls = MobileNetV2Config if d.get("vision_tower") == "mobilenet-v2" else VisionConfig
            d["vision"] = vision_cls.from_dict(d["vision"], f"{source} 'vision'")
        return super().from_dict(d, source)


IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the statistics torchvision's ImageNet models were trained with
IMAGENET_STD = (0.229, 0.224, 0.225)


def image_processor_kwargs(vision: VisionConfig | MobileNetV2Config) -> dict[str, Any]:
    """The ``ProcessorConfig`` image fields an encoder fixes: size, mode by channel count, mean/std 0.5 (from
    scratch) or ImageNet's (a pretrained MobileNetV2)."""
    if isinstance(vision, MobileNetV2Config):
        return {"image_size": vision.image_size, "image_mode": "RGB", "image_mean": IMAGENET_MEAN,
                "image_std": IMAGENET_STD}
    c = vision.in_channels
    return {"image_size": vision.image_size, "image_mode": "RGB" if c == 3 else "L", "image_mean": (0.5,) * c,
            "image_std": (0.5,) * c}


MULTIMODAL_PRESETS: dict[str, MultimodalConfig] = {
    # Tests: tiny decoder + tiny encoders (16 px images → 16 tokens, 0.64 s clips → 32 → 16 tokens).
    "tiny-omni": MultimodalConfig(
        name="tiny-omni", text=GPTConfig.from_name("tiny-gpt2", block_size=128),
        vision=VisionConfig.from_name("tiny-vit"), audio=AudioConfig.from_name("tiny-audio"),
        vision_projector=ProjectorConfig("mlp", 1), audio_projector=ProjectorConfig("mlp", 2), audio_frames=64),
}


# ------------------------------------------------------------------------------------------------------------
# Fusion


def scatter_placeholders(inputs_embeds: Tensor, input_ids: Tensor, token_id: int, features: Tensor | None,
                         what: str) -> Tensor:
    """Write ``features`` (N, T_f, C) into the positions of ``input_ids`` equal to ``token_id``, in order.

    Item n fills the n-th run of T_f placeholders, reading samples left to right, top to bottom; everything
    else is left untouched. Raises ValueError when the counts disagree."""
    is_ph = input_ids == token_id  # (B, T)
    found = int(is_ph.sum())
    if features is None:
        if found:
            raise ValueError(f"input_ids hold {found} {what} placeholder tokens (id {token_id}) but no {what} "
                             f"inputs were given")
        return inputs_embeds
    N, T_f, C = features.shape
    per_sample = is_ph.sum(dim=1)
    if found != N * T_f or bool((per_sample % T_f).any()):
        raise ValueError(f"input_ids hold {found} {what} placeholder tokens (id {token_id}; per sample "
                         f"{per_sample.tolist()}) but {N} {what} inputs × {T_f} tokens each = {N * T_f}: every "
                         f"{what} needs exactly {T_f} placeholder tokens")
    # masked_scatter consumes the source row-major, C values per True position: item after item, token by token.
    return inputs_embeds.masked_scatter(is_ph[..., None], features.to(inputs_embeds.dtype))


# ------------------------------------------------------------------------------------------------------------
# Pretrained convolutional tower


class FrozenConvTower(nn.Module):
    """A pretrained MobileNetV2 as a vision tower: its last feature map (N, 1280, 7, 7) → (N, grid², 1280) tokens
    (raster order), average-pooled to ``grid`` × ``grid`` when given. Always in eval mode (BatchNorm uses the
    ImageNet running statistics, never batch statistics): LLaVA trains the projector and the decoder, not the
    tower."""

    def __init__(self, config: MobileNetV2Config, grid: int | None = None) -> None:
        super().__init__()
        self.encoder = MobileNetV2Encoder(MobileNetV2(config))
        self.grid = grid
        self.n_embd = config.n_embd

    def train(self, mode: bool = True) -> FrozenConvTower:
        return super().train(False)

    def forward(self, pixel_values: Tensor) -> EncoderOutput:
        pooled, fmap = self.encoder.model.features_and_map(pixel_values)  # (N, C), (N, C, h, w)
        if self.grid is not None:
            fmap = nn.functional.adaptive_avg_pool2d(fmap, self.grid)  # (N, C, grid, grid)
        return EncoderOutput(last_hidden_state=fmap.flatten(2).transpose(1, 2), pooler_output=pooled)


# ------------------------------------------------------------------------------------------------------------
# The model


class MultimodalGPT(nn.Module):
    """``GPT`` whose placeholder tokens are replaced by projected image / audio encodings."""

    def __init__(self, config: MultimodalConfig, language_model: GPT | None = None) -> None:
        """``language_model``: a pretrained decoder of configuration ``config.text`` to use as it is (LLaVA's
        Vicuna, SmolLM2), instead of a freshly initialised one."""
        super().__init__()
        self.config = config
        C = config.text.n_embd
        if language_model is not None and language_model.config != config.text:
            raise ValueError("language_model's configuration differs from config.text")
        self.language_model = language_model if language_model is not None else GPT(config.text)
        self.vision_encoder: nn.Module | None = None
        if isinstance(config.vision, MobileNetV2Config):
            self.vision_encoder = FrozenConvTower(config.vision, config.vision_grid)
        elif config.vision is not None:
            self.vision_encoder = ViT(config.vision)
        self.vision_projector = (Projector(config.vision.n_embd, C, config.vision_projector)
                                 if config.vision else None)
        self.audio_encoder = AudioEncoder(config.audio) if config.audio else None
        self.audio_projector = Projector(config.audio.n_embd, C, config.audio_projector) if config.audio else None
        for proj in (self.vision_projector, self.audio_projector):  # GPT-2 init: keeps the first loss near ln V
            for m in proj.modules() if proj is not None else ():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=config.text.initializer_range)
                    nn.init.zeros_(m.bias)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by part, for per-module learning rates and staged schedules (LLaVA's stage 1 trains only
        the projectors: ``requires_grad_(False)`` on the rest)."""
        parts = ("language_model", "vision_encoder", "vision_projector", "audio_encoder", "audio_projector")
        return {n: list(getattr(self, n).parameters()) for n in parts if getattr(self, n) is not None}

    # -- encoders ------------------------------------------------------------------------------------------
    def encode_images(self, pixel_values: Tensor) -> Tensor:
        """(N, C, H, W) → (N, image_tokens, n_embd)."""
        if self.vision_encoder is None or self.vision_projector is None:
            raise ValueError("pixel_values given, but this model has no vision encoder (config.vision is None)")
        return self.vision_projector(self.vision_encoder(pixel_values).last_hidden_state)

    def encode_audio(self, input_features: Tensor) -> Tensor:
        """(N, n_mels, frames) → (N, audio_tokens, n_embd)."""
        if self.audio_encoder is None or self.audio_projector is None:
            raise ValueError("input_features given, but this model has no audio encoder (config.audio is None)")
        return self.audio_projector(self.audio_encoder(input_features).last_hidden_state)

    def placeholder_mask(self, input_ids: Tensor) -> Tensor:
        """(B, T) True where a placeholder token stands."""
        mask = torch.zeros_like(input_ids, dtype=torch.bool)
        for tid in (self.config.image_token_id, self.config.audio_token_id):
            if tid is not None:
                mask |= input_ids == tid
        return mask

    def embed(self, input_ids: Tensor, pixel_values: Tensor | None = None,
              input_features: Tensor | None = None) -> Tensor:
        """Token embeddings (B, T, C) with every placeholder position replaced by its media embedding."""
        cfg = self.config
        ids = input_ids.clamp(0, cfg.text.vocab_size - 1)  # range errors are reported by GPT's own check
        x = self.language_model.transformer.wte(ids)  # (B, T, C)
        for tid, values, encode, what in ((cfg.image_token_id, pixel_values, self.encode_images, "image"),
                                          (cfg.audio_token_id, input_features, self.encode_audio, "audio")):
            if tid is None:
                if values is not None:
                    raise ValueError(f"{what} inputs given, but config.{what}_token_id is not set")
                continue
            feats = encode(values) if values is not None else None
            x = scatter_placeholders(x, input_ids, tid, feats, what)
        return x

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, pixel_values: Tensor | None = None,
                input_features: Tensor | None = None, labels: Tensor | None = None,
                position_ids: Tensor | None = None, past_key_values: list[KVCache] | None = None,
                logits_to_keep: int = 0, output_hidden_states: bool = False) -> GPTOutput:
        """Like ``GPT.forward``; media only in the prefill (decode steps carry plain tokens and the KV cache)."""
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            raise ValueError("input_ids must be a (batch, seq_len) tensor")
        text_ids = input_ids[~self.placeholder_mask(input_ids)]  # placeholders may lie past the vocabulary
        if text_ids.numel() and (int(text_ids.min()) < 0 or int(text_ids.max()) >= self.config.text.vocab_size):
            raise ValueError(f"token ids must be in [0, vocab_size {self.config.text.vocab_size})")
        T = input_ids.shape[1]
        if position_ids is None and attention_mask is not None and not bool(attention_mask.all()):
            # Left padding shifts each row's start: positions count real tokens only (HF generate does the same).
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -T:]
        if labels is not None:
            labels = labels.masked_fill(self.placeholder_mask(input_ids), -100)  # never predict a placeholder
        embeds = self.embed(input_ids, pixel_values, input_features)
        return self.language_model(attention_mask=attention_mask, position_ids=position_ids, labels=labels,
                                   inputs_embeds=embeds, past_key_values=past_key_values,
                                   output_hidden_states=output_hidden_states, logits_to_keep=logits_to_keep)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "MULTIMODAL_PRESETS", "FrozenConvTower", "MultimodalConfig",
           "MultimodalGPT", "Projector", "ProjectorConfig", "image_processor_kwargs", "scatter_placeholders"]
