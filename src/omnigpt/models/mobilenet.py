"""MobileNetV2 (Sandler et al. 2018), an ImageNet classifier and a convolutional vision tower.

Reading order: ``ConvBNReLU`` (conv → BatchNorm → ReLU6), ``InvertedResidual`` (1×1 expand → 3×3 depthwise →
1×1 linear projection, a skip connection when the shape allows), ``MobileNetV2Config`` + presets, ``MobileNetV2``
(stem, 17 inverted residual blocks, a 1×1 conv to 1280 channels, global average pooling, dropout + linear head),
``MobileNetV2Encoder``, which hands the 7×7 feature map to a multimodal decoder as 49 tokens, and
``MobileNetV2ForImageClassification``, a new head over a frozen, partly frozen or trained backbone (fine-tuning).

Reference: torchvision's ``models/mobilenetv2.py``. Module names are torchvision's own (``features.N.conv.M``,
``classifier.1``), so its ImageNet checkpoint (``IMAGENET1K_V1``: 71.9% top-1) loads strictly with no key map;
the ``nn.Sequential`` indices are therefore part of the format and commented where they are built. Deviations:
none in the computation; ``features_and_map`` exposes the pooled vector and the last feature map, which
torchvision does not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from omnigpt.config import PresetConfig
from omnigpt.models.vision import EncoderOutput, ImageClassifierOutput

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


# ------------------------------------------------------------------------------------------------------------
# Fine-tuning: a new head over a frozen, partly frozen or fully trained backbone

MOBILENET_CLASSIFIER_TYPE = "omnigpt-mobilenet-classifier"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet normalisation, which the pretrained weights expect
IMAGENET_STD = (0.229, 0.224, 0.225)
FREEZE_MODES = ("all", "partial", "none")


@dataclass(frozen=True)
class MobileNetClassifierConfig(PresetConfig):
    """MobileNetV2 with a head over ``labels``, and which part of the backbone (``features``) stays fixed.

    ``freeze``: "all" — every ``features`` module is frozen (weights and BatchNorm statistics), only the head
    trains (a linear probe with dropout); "partial" — the last ``train_blocks`` modules of ``features`` train too
    (4: the 1×1 conv to 1280 channels and the three blocks before it, features.15–18 at the ImageNet setting);
    "none" — everything trains. ``pixel_mean``/``pixel_std`` normalise RGB in [0, 1]; ``background`` is the colour
    transparent pixels are composited onto. Preprocessing reads all three from here, so a saved run classifies
    raw image files."""

    model_type = MOBILENET_CLASSIFIER_TYPE
    name: str = "custom"
    mobilenet: MobileNetV2Config = MOBILENET_PRESETS["mobilenet-v2"]
    labels: tuple[str, ...] = ()
    freeze: str = "none"
    train_blocks: int = 4
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    background: tuple[int, int, int] = (255, 255, 255)

    def __post_init__(self) -> None:
        if len(self.labels) < 2:
            raise ValueError(f"MobileNetClassifierConfig({self.name!r}): needs at least 2 labels, got {self.labels}")
        if self.freeze not in FREEZE_MODES:
            raise ValueError(f"MobileNetClassifierConfig({self.name!r}): freeze must be one of {FREEZE_MODES}, got "
                             f"{self.freeze!r}")
        n = self.num_feature_modules
        if self.freeze == "partial" and not 1 <= self.train_blocks < n:
            raise ValueError(f"MobileNetClassifierConfig({self.name!r}): train_blocks must be in [1, {n - 1}] "
                             f"(features has {n} modules), got {self.train_blocks}")

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def image_size(self) -> int:
        return self.mobilenet.image_size

    @property
    def num_feature_modules(self) -> int:
        """Modules in ``features``: the stem, one per inverted residual block, the last 1×1 conv (19 for ImageNet)."""
        return 2 + sum(n for _, _, n, _ in self.mobilenet.setting)


class MobileNetV2ForImageClassification(nn.Module):
    """``MobileNetV2`` whose ``classifier`` (dropout + Linear 1280 → K) is new, with ``config.freeze`` applied.

    Frozen modules get ``requires_grad_(False)`` and stay in eval mode whatever ``train()`` is called with, so their
    BatchNorm running statistics do not move either: a frozen backbone leaves training bit-identical.
    ``parameter_groups`` names only what trains (``backbone``: the unfrozen ``features`` modules; ``head``), so the
    trainer's optimizer never sees a frozen weight. Returns the ViT classifier's ``ImageClassifierOutput``."""

    def __init__(self, config: MobileNetClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.mobilenet = MobileNetV2(config.mobilenet.replace(num_classes=config.num_labels))
        for m in self.frozen_modules():
            m.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        f = self.mobilenet.features
        n = {"all": len(f), "partial": len(f) - self.config.train_blocks, "none": 0}[self.config.freeze]
        return list(f[:n])

    def train(self, mode: bool = True) -> MobileNetV2ForImageClassification:
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()  # frozen BatchNorms normalise with their (pretrained) running statistics and never update them
        return self

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        backbone = [p for m in self.mobilenet.features if m not in self.frozen_modules() for p in m.parameters()]
        return {**({"backbone": backbone} if backbone else {}), "head": list(self.mobilenet.classifier.parameters())}

    def load_backbone(self, state_dict: Mapping[str, Tensor]) -> None:
        """Copy ``features.*`` of a torchvision-named MobileNetV2 state dict (e.g. the ImageNet one), strictly; the
        head keeps its fresh init."""
        feats = {k.removeprefix("features."): v for k, v in state_dict.items() if k.startswith("features.")}
        self.mobilenet.features.load_state_dict(feats, strict=True)

    def forward(self, pixel_values: Tensor, labels: Tensor | None = None) -> ImageClassifierOutput:
        pooled, _ = self.mobilenet.features_and_map(pixel_values)  # (B, 1280)
        logits = self.mobilenet.classifier(pooled)  # (B, K)
        loss = F.cross_entropy(logits.float(), labels) if labels is not None else None
        return ImageClassifierOutput(logits=logits, features=pooled, loss=loss)


def count_state_values(model: nn.Module) -> int:
    """Numbers in the state dict: parameters plus BatchNorm running statistics and their step counters."""
    return sum(t.numel() for t in model.state_dict().values())


__all__ = ["FREEZE_MODES", "IMAGENET_MEAN", "IMAGENET_STD", "MOBILENET_CLASSIFIER_TYPE", "MOBILENET_PRESETS",
           "ConvBNReLU", "InvertedResidual", "MobileNetClassifierConfig", "MobileNetV2", "MobileNetV2Config",
           "MobileNetV2Encoder", "MobileNetV2ForImageClassification", "count_state_values", "make_divisible"]
