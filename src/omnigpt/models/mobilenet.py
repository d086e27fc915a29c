"""MobileNetV2 (Sandler et al. 2018), an ImageNet classifier and a convolutional vision tower.

Reading order: ``ConvBNReLU`` (conv → BatchNorm → ReLU6), ``InvertedResidual`` (1×1 expand → 3×3 depthwise →
1×1 linear projection, a skip connection when the shape allows), ``MobileNetV2Config`` + presets, ``MobileNetV2``
(stem, 17 inverted residual blocks, a 1×1 conv to 1280 channels, global average pooling, dropout + linear head),
and ``MobileNetV2Encoder``, which hands the 7×7 feature map to a multimodal decoder as 49 tokens.

Reference: torchvision's ``models/mobilenetv2.py``. Module names are torchvision's own (``features.N.conv.M``,
``classifier.1``), so its ImageNet checkpoint (``IMAGENET1K_V1``: 71.9% top-1) loads strictly with no key map;
the ``nn.Sequential`` indices are therefore part of the format and commented where they are built. Deviations:
none in the computation; ``features_and_map`` exposes the pooled vector and the last feature map, which
torchvision does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from omnigpt.config import PresetConfig
from omnigpt.models.vision import EncoderOutput

# ------------------------------------------------------------------------------------------------------------
# Building blocks


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` (at least ``divisor``), never more than 10% below ``v``
    (the rule of the original TensorFlow code, which torchvision copies: width_mult 1.0 keeps 32 → 32, 1280 → 1280)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU(nn.Sequential):
    """Conv2d (no bias: BatchNorm has one) → BatchNorm2d → ReLU6, 'same' padding. Indices 0, 1, 2 as in
    torchvision's ``Conv2dNormActivation``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        padding = (kernel_size - 1) // 2
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU6(inplace=True),  # min(max(x, 0), 6): robust under low-precision arithmetic (the paper's choice)
        )


class InvertedResidual(nn.Module):
    """Expand (1×1, ×t channels) → depthwise 3×3 (stride s) → project (1×1, linear: no activation).

    The bottleneck is narrow and the expansion wide, the inverse of ResNet's bottleneck; the projection has no
    ReLU because a ReLU in a narrow layer destroys information (the paper's "linear bottleneck")."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual stride must be 1 or 2, got {stride}")
        hidden = round(in_ch * expand_ratio)
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(in_ch, hidden, kernel_size=1))  # conv.0 (pointwise expansion)
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),  # depthwise: one 3×3 filter per channel
            nn.Conv2d(hidden, out_ch, 1, bias=False),  # linear projection
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# ------------------------------------------------------------------------------------------------------------
# Config and presets

# Table 2 of the paper: (expansion t, output channels c, repeats n, first stride s) per stage.
IMAGENET_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


@dataclass(frozen=True)
class MobileNetV2Config(PresetConfig):
    """Architecture of a MobileNetV2. ``width_mult`` scales every layer's channels (the paper's α)."""

    name: str = "custom"
    num_classes: int = 1000
    width_mult: float = 1.0
    round_nearest: int = 8
    in_channels: int = 3
    image_size: int = 224  # the size it was trained at; the network itself accepts any size ≥ 32
    dropout: float = 0.2  # before the classifier
    setting: tuple[tuple[int, int, int, int], ...] = IMAGENET_SETTING
    stem_channels: int = 32
    last_channels: int = 1280

    def __post_init__(self) -> None:
        if self.width_mult <= 0 or self.num_classes <= 0:
            raise ValueError(f"MobileNetV2Config({self.name!r}): width_mult and num_classes must be positive")
        if not self.setting or any(len(row) != 4 for row in self.setting):
            raise ValueError(f"MobileNetV2Config({self.name!r}): setting must be non-empty (t, c, n, s) rows")

    @property
    def n_embd(self) -> int:
        """Channels of the last feature map (1280 at width 1.0; never below 1280: the paper keeps it for α < 1)."""
        return make_divisible(self.last_channels * max(1.0, self.width_mult), self.round_nearest)

    @property
    def downsample(self) -> int:
        """Total stride: 2 for the stem times 2 per stride-2 stage (32 for the ImageNet setting)."""
        return 2 * 2 ** sum(1 for *_, s in self.setting if s == 2)

    @property
    def num_tokens(self) -> int:
        """Spatial positions of the last feature map at ``image_size`` (7 × 7 = 49 at 224 px)."""
        side = -(-self.image_size // self.downsample)  # ceil: each stride-2 conv with padding 1 rounds up
        return side * side

    @classmethod
    def _presets(cls) -> Mapping[str, MobileNetV2Config]:
        return MOBILENET_PRESETS

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MobileNetV2Config:
        d = dict(d)
        if "setting" in d:  # JSON has lists; the frozen config keeps tuples
            d["setting"] = tuple(tuple(row) for row in d["setting"])
        return cls(**d)


MOBILENET_PRESETS: dict[str, MobileNetV2Config] = {
    # torchvision mobilenet_v2 / IMAGENET1K_V1: 3,504,872 parameters (+ 34,164 BatchNorm buffer values).
    "mobilenet-v2": MobileNetV2Config(name="mobilenet-v2"),
    # Tests: width 0.25, 10 classes at 32 px: 1280-channel head kept, 1 × 1 final map.
    "tiny-mobilenet-v2": MobileNetV2Config(name="tiny-mobilenet-v2", num_classes=10, width_mult=0.25,
                                           image_size=32),
}


# ------------------------------------------------------------------------------------------------------------
# The model


class MobileNetV2(nn.Module):
    """Stem conv (stride 2) → inverted residual stages → 1×1 conv to ``n_embd`` → average pool → linear head."""

    def __init__(self, config: MobileNetV2Config) -> None:
        super().__init__()
        self.config = config
        cfg = config
        in_ch = make_divisible(cfg.stem_channels * cfg.width_mult, cfg.round_nearest)
        layers: list[nn.Module] = [ConvBNReLU(cfg.in_channels, in_ch, stride=2)]  # features.0
        for t, c, n, s in cfg.setting:
            out_ch = make_divisible(c * cfg.width_mult, cfg.round_nearest)
            for i in range(n):  # only a stage's first block changes resolution
                layers.append(InvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        layers.append(ConvBNReLU(in_ch, cfg.n_embd, kernel_size=1))  # features.18 at the ImageNet setting
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.n_embd, cfg.num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision's init: Kaiming-normal (fan-out) convs, unit BatchNorms, N(0, 0.01) classifier."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _check(self, pixel_values: Tensor) -> None:
        c = self.config.in_channels
        if not isinstance(pixel_values, Tensor) or pixel_values.dim() != 4 or pixel_values.shape[1] != c:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must have shape (N, {c}, H, W), got {shape}")
        if min(pixel_values.shape[2:]) < 1:
            raise ValueError(f"pixel_values has an empty spatial size {tuple(pixel_values.shape[2:])}")

    def features_and_map(self, pixel_values: Tensor) -> tuple[Tensor, Tensor]:
        """The pooled image vector (N, n_embd) and the last feature map (N, n_embd, H/32, W/32): 7×7 at 224 px."""
        self._check(pixel_values)
        fmap = self.features(pixel_values.to(self.classifier[1].weight.dtype))  # (N, 1280, 7, 7)
        pooled = F.adaptive_avg_pool2d(fmap, 1).flatten(1)  # (N, 1280): global average over positions
        return pooled, fmap

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Class logits (N, num_classes) of normalised images (N, 3, H, W)."""
        pooled, _ = self.features_and_map(pixel_values)
        return self.classifier(pooled)


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 as a vision tower: the last feature map as a sequence of ``num_tokens`` vectors (raster order),
    the same ``EncoderOutput`` a ViT returns, so a projector can map it into a decoder (LLaVA-style)."""

    def __init__(self, model: MobileNetV2) -> None:
        super().__init__()
        self.model = model
        self.config = model.config

    @property
    def n_embd(self) -> int:
        return self.config.n_embd

    @property
    def num_tokens(self) -> int:
        return self.config.num_tokens

    def forward(self, pixel_values: Tensor) -> EncoderOutput:
        pooled, fmap = self.model.features_and_map(pixel_values)  # (N, C), (N, C, h, w)
        tokens = fmap.flatten(2).transpose(1, 2)  # (N, h·w, C): one vector per position, row by row
        return EncoderOutput(last_hidden_state=tokens, pooler_output=pooled)


def count_state_values(model: nn.Module) -> int:
    """Numbers in the state dict: parameters plus BatchNorm running statistics and their step counters."""
    return sum(t.numel() for t in model.state_dict().values())


__all__ = ["MOBILENET_PRESETS", "ConvBNReLU", "InvertedResidual", "MobileNetV2", "MobileNetV2Config",
           "MobileNetV2Encoder", "count_state_values", "make_divisible"]

