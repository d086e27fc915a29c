"""Vision Transformer image encoder (ViT, Dosovitskiy et al. 2021), trained from scratch.

Reading order: ``encoder_blocks`` (the GPT decoder's own ``Block`` with ``causal=False``: pre-LN like GPT-2 and
CLIP, shared with the audio encoder), ``VisionConfig`` + presets, ``ViT``.

The ViT follows CLIP's visual tower (``ln_pre`` after the embeddings, pre-LN blocks, ``ln_post``) and the
reference ViT's patch embedding (a conv with kernel = stride = patch size) and learned positions. A ``[CLS]``
token is optional: contrastive models pool it; multimodal decoders (LLaVA-1.5, nanoVLM) take the patch tokens.
Module names follow the GPT-2 checkpoint (``ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc, mlp.c_proj``) so one
reading of names covers every tower in omnigpt.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from omnigpt.config import GPTConfig, PresetConfig
from omnigpt.models.gpt import Block

# ------------------------------------------------------------------------------------------------------------
# Encoder blocks: the decoder's block without the causal mask


def encoder_blocks(n_layer: int, n_embd: int, n_head: int, mlp_hidden: int, dropout: float = 0.0,
                   eps: float = 1e-5) -> nn.ModuleList:
    """``n_layer`` of the decoder's own ``Block`` with ``causal=False``: pre-LN, full (bidirectional) attention
    through ``scaled_dot_product_attention``, an exact-GELU MLP — x + Attn(LN(x)), then x + MLP(LN(x))."""
    cfg = GPTConfig(name="encoder", n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_inner=mlp_hidden,
                    activation="gelu", dropout=dropout, layer_norm_epsilon=eps, causal=False)
    return nn.ModuleList(Block(cfg, i) for i in range(n_layer))


def init_encoder_weights(module: nn.Module, n_layer: int, std: float = 0.02) -> None:
    """GPT-2-style init (PyTorch's N(0, 1) defaults stall small models): N(0, 0.02) linears/convs, residual
    projections scaled by 1/√(2·n_layer), zero biases, unit LayerNorms."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d):
            s = std / math.sqrt(2 * n_layer) if name.endswith("c_proj") else std
            nn.init.normal_(m.weight, mean=0.0, std=s)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@dataclass
class EncoderOutput:
    """Encoder result, named as in ``transformers``."""

    last_hidden_state: Tensor  # (B, N, C): one vector per patch / audio frame pair (CLS excluded)
    pooler_output: Tensor  # (B, C): CLS token when there is one, else the mean of last_hidden_state


# ------------------------------------------------------------------------------------------------------------
# Config and presets


@dataclass(frozen=True)
class VisionConfig(PresetConfig):
    """Architecture of a ViT image encoder."""

    name: str = "custom"
    image_size: int = 224
    patch_size: int = 16
    in_channels: int = 3  # 3 for RGB, 1 for grayscale (Fashion-MNIST)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    mlp_ratio: float = 4.0
    use_cls_token: bool = True
    dropout: float = 0.0
    layer_norm_epsilon: float = 1e-5
    # > 0: a convolutional stem of this many channels (two 3×3 convs + GELU at full resolution) before the patch
    # embedding, as in "Early Convolutions Help Transformers See Better" (Xiao et al. 2021): same tokens, better
    # optimisation at small data and compute. 0: the plain ViT patchify.
    conv_stem: int = 0

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"VisionConfig({self.name!r}): image_size {self.image_size} is not a multiple of "
                             f"patch_size {self.patch_size}")
        if self.n_embd % self.n_head:
            raise ValueError(f"VisionConfig({self.name!r}): n_embd {self.n_embd} not divisible by n_head "
                             f"{self.n_head}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def _presets(cls) -> Mapping[str, VisionConfig]:
        return VISION_PRESETS


VISION_PRESETS: dict[str, VisionConfig] = {
    # The ViT paper's / DeiT's sizes at 224 px, patch 16 (196 patches + CLS); counts without a classifier head.
    "vit-tiny": VisionConfig(name="vit-tiny", n_layer=12, n_head=3, n_embd=192),  # 5,524,800 (DeiT-Ti)
    "vit-small": VisionConfig(name="vit-small", n_layer=12, n_head=6, n_embd=384),  # 21,666,432 (DeiT-S)
    "vit-base": VisionConfig(name="vit-base", n_layer=12, n_head=12, n_embd=768),  # 85,800,192 (ViT-B/16)
    # Fashion-MNIST / emoji on 2 CPU cores: 28 px grayscale, 7 px patches → 16 patches.
    "vit-fmnist": VisionConfig(name="vit-fmnist", image_size=28, patch_size=7, in_channels=1, n_layer=4, n_head=4,
                               n_embd=128),  # 802,304
    "vit-emoji": VisionConfig(name="vit-emoji", image_size=32, patch_size=8, n_layer=4, n_head=4,
                              n_embd=128),  # 820,608
    "tiny-vit": VisionConfig(name="tiny-vit", image_size=16, patch_size=4, n_layer=2, n_head=2, n_embd=32),  # 27,680
}


# ------------------------------------------------------------------------------------------------------------
# The model


class ViT(nn.Module):
    """Patchify → linear embedding (+ CLS) + learned positions → LN → pre-LN blocks → LN."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        C = config.n_embd
        cin = config.in_channels
        self.stem = None
        if config.conv_stem:
            s = config.conv_stem
            self.stem = nn.Sequential(nn.Conv2d(cin, s, 3, padding=1), nn.GELU(), nn.Conv2d(s, s, 3, padding=1),
                                      nn.GELU())
            cin = s
        # A conv with kernel = stride = patch size is "split into patches, flatten, one Linear" in one op.
        self.patch_embed = nn.Conv2d(cin, C, kernel_size=config.patch_size, stride=config.patch_size)
        n_pos = config.num_patches + (1 if config.use_cls_token else 0)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C)) if config.use_cls_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, n_pos, C))
        self.ln_pre = nn.LayerNorm(C, eps=config.layer_norm_epsilon)
        hidden = int(config.mlp_ratio * C)
        self.h = encoder_blocks(config.n_layer, C, config.n_head, hidden, config.dropout, config.layer_norm_epsilon)
        self.ln_post = nn.LayerNorm(C, eps=config.layer_norm_epsilon)
        init_encoder_weights(self, config.n_layer)
        if self.stem is not None:  # convs feeding GELUs keep PyTorch's fan-in init (0.02 would shrink them ~50×)
            for m in self.stem:
                if isinstance(m, nn.Conv2d):
                    m.reset_parameters()
        nn.init.normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    @property
    def num_tokens(self) -> int:
        """Patch tokens per image handed to a projector (CLS excluded)."""
        return self.config.num_patches

    def forward(self, pixel_values: Tensor) -> EncoderOutput:
        cfg = self.config
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(f"pixel_values must have shape (N, {', '.join(map(str, expected))}), "
                             f"got {tuple(pixel_values.shape)}")
        x = pixel_values.to(self.pos_embed.dtype)
        if self.stem is not None:
            x = self.stem(x)  # (B, conv_stem, H, W)
        x = self.patch_embed(x)  # (B, C, H/p, W/p)
        x = x.flatten(2).transpose(1, 2)  # (B, N, C), patches in raster order
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + N, C)
        x = self.ln_pre(x + self.pos_embed)
        for block in self.h:
            x = block(x)
        x = self.ln_post(x)
        if self.cls_token is not None:
            return EncoderOutput(last_hidden_state=x[:, 1:], pooler_output=x[:, 0])
        return EncoderOutput(last_hidden_state=x, pooler_output=x.mean(dim=1))


# ------------------------------------------------------------------------------------------------------------
# Image classification: the ViT plus a linear head (the ``image-classify`` task; Dosovitskiy et al. 2021, §3.1)

IMAGE_CLASSIFIER_TYPE = "omnigpt-image-classifier"


@dataclass(frozen=True)
class ImageClassifierConfig(PresetConfig):
    """A ViT + linear classifier over ``labels``. ``pixel_mean``/``pixel_std`` normalise inputs in [0, 1] (the
    training set's statistics; preprocessing reads them from here so a saved model classifies raw images)."""

    model_type = IMAGE_CLASSIFIER_TYPE
    name: str = "custom"
    vision: VisionConfig = VisionConfig()
    labels: tuple[str, ...] = ()
    pool: str = "cls"  # "cls": the CLS token (needs use_cls_token); "mean": the mean of the patch tokens
    head_dropout: float = 0.0
    pixel_mean: float = 0.0
    pixel_std: float = 1.0

    def __post_init__(self) -> None:
        if len(self.labels) < 2:
            raise ValueError(f"ImageClassifierConfig({self.name!r}): needs at least 2 labels, got {self.labels}")
        if self.pool not in ("cls", "mean") or (self.pool == "cls" and not self.vision.use_cls_token):
            raise ValueError(f"ImageClassifierConfig({self.name!r}): pool must be 'mean', or 'cls' with a CLS token")

    @property
    def num_labels(self) -> int:
        return len(self.labels)


@dataclass
class ImageClassifierOutput:
    logits: Tensor  # (B, num_labels)
    features: Tensor  # (B, C): the pooled vector the head reads (the feature space of Fréchet distances)
    loss: Tensor | None = None


class ViTForImageClassification(nn.Module):
    """``ViT`` → pooled vector (CLS or mean of patches) → dropout → ``head`` (Linear C → num_labels).

    The head starts at zero (the ViT paper's fine-tuning head init): the first logits are uniform, loss = ln K."""

    def __init__(self, config: ImageClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.vit = ViT(config.vision)
        self.drop = nn.Dropout(config.head_dropout)
        self.head = nn.Linear(config.vision.n_embd, config.num_labels)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, pixel_values: Tensor, labels: Tensor | None = None) -> ImageClassifierOutput:
        out = self.vit(pixel_values)
        feats = out.pooler_output if self.config.pool == "cls" else out.last_hidden_state.mean(dim=1)  # (B, C)
        logits = self.head(self.drop(feats))  # (B, K)
        loss = nn.functional.cross_entropy(logits.float(), labels) if labels is not None else None
        return ImageClassifierOutput(logits=logits, features=feats, loss=loss)
