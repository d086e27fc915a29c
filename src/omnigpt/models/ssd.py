"""SSD-MobileNetV2 (Liu et al. 2016 "SSD"; Sandler et al. 2018 §6.2) as in TensorFlow's object-detection API export
``ssd_mobilenet_v2_coco_quant_postprocess.tflite``: a MobileNetV2 backbone, four extra stride-2 layers, six
box/class predictors over 1917 fixed anchors, box decoding and greedy non-maximum suppression.

Reading order: ``SameConv2d`` (a convolution with bias and TensorFlow's "SAME" padding), ``ConvReLU6``,
``FoldedInvertedResidual``, ``SSDConfig`` + preset, ``SSDMobileNetV2`` (forward → box encodings and class logits),
then the post-processing of TFLite's ``TFLite_Detection_PostProcess`` op written out: ``decode_boxes``, ``iou``,
``greedy_nms``, ``postprocess``.

Differences from ``models/mobilenet.py`` (whose stage table ``IMAGENET_SETTING`` and ``make_divisible`` are reused):

* BatchNorm is folded into the convolutions (the export did it), so every convolution has a bias and there is no
  BatchNorm: ``ConvBNReLU``/``InvertedResidual`` do not fit and ``ConvReLU6``/``FoldedInvertedResidual`` replace
  them, with the same indices less the BatchNorms (``features.N.conv.M``).
* TensorFlow's "SAME" padding: a stride-2 3×3 convolution over an even size pads 0 before and 1 after (300 → 150
  reads rows −0…300), where PyTorch's ``padding=1`` would pad 1 on both sides and shift every output by a pixel.
* The first predictor reads the 19×19 map after block 13's 1×1 *expansion* (576 channels, before its depthwise
  convolution), the second the 10×10 map of the last 1×1 conv (1280); the extra layers are plain 1×1 + 3×3/2
  convolutions (not SSDLite's depthwise ones) down to 5, 3, 2, 1; the predictors are single 1×1 convolutions.

Numerics: the file is uint8-quantized; we run its dequantized weights in float32 with plain ReLU6, so activations
are not rounded to 8 bits nor clipped to their calibrated ranges as the TFLite interpreter does. Scores therefore
differ from tflite-runtime's by up to ~0.01 (0.013 at most on the test photographs: tests/apps/detect/test_ssd.py).

Post-processing follows ``TFLite_Detection_PostProcess``: anchors are (y, x, h, w) centre-size; an encoding
(ty, tx, th, tw) decodes to centre ``ty / y_scale · h_a + y_a`` and size ``exp(th / h_scale) · h_a`` (x, w alike);
class 0 is the background and is dropped. Fast NMS (``use_regular_nms`` false, this model's setting) ranks each
anchor by its best class score and runs one class-agnostic greedy NMS; regular NMS runs it per class
(``detections_per_class`` each) and keeps the best ``max_detections`` overall. Greedy NMS: sort by score (stable,
descending), take the best remaining box, drop every later box whose IoU with it exceeds the threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnigpt.config import PresetConfig
from omnigpt.models.mobilenet import IMAGENET_SETTING, make_divisible

# ------------------------------------------------------------------------------------------------------------
# Building blocks


class SameConv2d(nn.Conv2d):
    """Conv2d with bias and TensorFlow's "SAME" padding: output size ceil(H / stride), the padding split with the
    odd pixel after (bottom/right), computed for each input size."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 1, stride: int = 1, groups: int = 1) -> None:
        super().__init__(in_ch, out_ch, kernel_size, stride, padding=0, groups=groups, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:], self.kernel_size, self.stride, strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads.append((total // 2, total - total // 2))  # (before, after)
        (top, bottom), (left, right) = pads
        if top == bottom and left == right:  # symmetric: let the convolution pad (no copy)
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), groups=self.groups)
        return F.conv2d(F.pad(x, (left, right, top, bottom)), self.weight, self.bias, self.stride, groups=self.groups)


class ConvReLU6(nn.Sequential):
    """``SameConv2d`` → ReLU6 (indices 0, 1): ``ConvBNReLU`` with the BatchNorm folded into the conv."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(SameConv2d(in_ch, out_ch, kernel_size, stride, groups), nn.ReLU6())


class FoldedInvertedResidual(nn.Module):
    """MobileNetV2's block with folded BatchNorms: [1×1 expand + ReLU6] → 3×3 depthwise + ReLU6 → 1×1 linear
    projection, plus the input when the shape allows. ``forward(x, expansion=True)`` also returns the expansion's
    output, which SSD's first predictor reads."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = round(in_ch * expand_ratio)
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = [ConvReLU6(in_ch, hidden, 1)] if expand_ratio != 1 else []
        layers += [ConvReLU6(hidden, hidden, 3, stride, groups=hidden), SameConv2d(hidden, out_ch, 1)]
        self.conv = nn.Sequential(*layers)
        self.expands = expand_ratio != 1

    def forward(self, x: Tensor, expansion: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        h = self.conv[0](x) if self.expands else x  # (N, hidden, H, W)
        y = self.conv[int(self.expands):](h)  # (N, out, H / s, W / s)
        y = x + y if self.use_res_connect else y
        return (y, h) if expansion else y


# ------------------------------------------------------------------------------------------------------------
# Config and preset

@dataclass(frozen=True)
class SSDConfig(PresetConfig):
    """Architecture and post-processing of an SSD-MobileNetV2. The post-processing fields are the custom op's
    options of the same names; the loader reads them from the file."""

    model_type = "ssd_mobilenet_v2"
    name: str = "custom"
    image_size: int = 300
    num_classes: int = 90  # without the background class, which the predictors output first
    classes: tuple[str, ...] = ()  # a name per class index (empty: "class i")
    width_mult: float = 1.0
    setting: tuple[tuple[int, int, int, int], ...] = IMAGENET_SETTING
    tap_block: int = 14  # features[14] (TF's expanded_conv_13): its expansion output feeds predictor 0
    last_channels: int = 1280
    extras: tuple[tuple[int, int], ...] = ((256, 512), (128, 256), (128, 256), (64, 128))  # (1×1, 3×3/2) channels
    anchors_per_location: tuple[int, ...] = (3, 6, 6, 6, 6, 6)  # per predictor
    y_scale: float = 10.0
    x_scale: float = 10.0
    h_scale: float = 5.0
    w_scale: float = 5.0
    nms_iou_threshold: float = 0.6
    nms_score_threshold: float = 1e-8
    max_detections: int = 20
    max_classes_per_detection: int = 1
    detections_per_class: int = 100
    use_regular_nms: bool = False

    def __post_init__(self) -> None:
        if len(self.anchors_per_location) != 2 + len(self.extras):
            raise ValueError(f"SSDConfig({self.name!r}): one anchors_per_location entry per predictor "
                             f"({2 + len(self.extras)}), got {self.anchors_per_location}")
        if self.classes and len(self.classes) != self.num_classes:
            raise ValueError(f"SSDConfig({self.name!r}): {len(self.classes)} class names for {self.num_classes}")
        if self.max_classes_per_detection != 1:
            raise ValueError(f"SSDConfig({self.name!r}): max_classes_per_detection must be 1 (several classes per "
                             f"box are not implemented), got {self.max_classes_per_detection}")
        if min(self.max_detections, self.num_classes) < 1 or (self.use_regular_nms and self.detections_per_class < 1):
            raise ValueError(f"SSDConfig({self.name!r}): max_detections, num_classes (and detections_per_class with "
                             f"regular NMS) must be positive")
        if min(self.y_scale, self.x_scale, self.h_scale, self.w_scale) <= 0 or not 0 <= self.nms_iou_threshold <= 1:
            raise ValueError(f"SSDConfig({self.name!r}): box scales must be positive, nms_iou_threshold in [0, 1]")

    def class_name(self, i: int) -> str:
        return self.classes[i] if self.classes else f"class {i}"

    @classmethod
    def _presets(cls) -> Mapping[str, SSDConfig]:
        return SSD_PRESETS


SSD_PRESETS: dict[str, SSDConfig] = {
    # ssd_mobilenet_v2_coco quantized (TF object-detection API, Coral's export): 6.07M parameters, 1917 anchors.
    "ssd-mobilenet-v2-coco": SSDConfig(name="ssd-mobilenet-v2-coco"),
}


# ------------------------------------------------------------------------------------------------------------
# The model


class SSDHead(nn.Module):
    """One predictor: 1×1 convolutions to ``A`` box encodings and ``A`` × (K + 1) class logits per position."""

    def __init__(self, in_ch: int, anchors: int, num_classes: int) -> None:
        super().__init__()
        self.box = SameConv2d(in_ch, anchors * 4, 1)
        self.cls = SameConv2d(in_ch, anchors * (num_classes + 1), 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        N = x.shape[0]
        # (N, A·4, h, w) → (N, h, w, A·4) → (N, h·w·A, 4): anchors ordered by row, column, then anchor (as TFLite's)
        box = self.box(x).permute(0, 2, 3, 1).reshape(N, -1, 4)
        cls = self.cls(x).permute(0, 2, 3, 1).reshape(N, box.shape[1], -1)  # (N, h·w·A, K + 1)
        return box, cls


class SSDOutput(NamedTuple):
    box_encodings: Tensor  # (N, num_anchors, 4): ty, tx, th, tw
    class_logits: Tensor  # (N, num_anchors, K + 1), background first


class SSDDetections(NamedTuple):
    """One image's detections, best first."""

    boxes: Tensor  # (n, 4) ymin, xmin, ymax, xmax as fractions of the input (may stray slightly outside [0, 1])
    labels: Tensor  # (n,) class indices 0 … K−1 (background removed)
    scores: Tensor  # (n,) sigmoid class scores


class SSDMobileNetV2(nn.Module):
    """``forward(pixel_values (N, 3, 300, 300) in [-1, 1])`` → box encodings and class logits for every anchor;
    ``detect`` adds decoding and NMS. ``anchors`` (num_anchors, 4: y, x, h, w) is a buffer the checkpoint fills."""

    def __init__(self, config: SSDConfig) -> None:
        super().__init__()
        self.config = cfg = config
        in_ch = make_divisible(32 * cfg.width_mult)
        layers: list[nn.Module] = [ConvReLU6(3, in_ch, 3, 2)]  # features.0
        for t, c, n, s in cfg.setting:
            out_ch = make_divisible(c * cfg.width_mult)
            for i in range(n):
                layers.append(FoldedInvertedResidual(in_ch, out_ch, s if i == 0 else 1, t))
                in_ch = out_ch
        last = make_divisible(cfg.last_channels * max(1.0, cfg.width_mult))
        layers.append(ConvReLU6(in_ch, last, 1))  # features.18
        self.features = nn.Sequential(*layers)
        tap = self.features[cfg.tap_block]
        if not isinstance(tap, FoldedInvertedResidual) or not tap.expands:
            raise ValueError(f"SSDConfig({cfg.name!r}): tap_block {cfg.tap_block} is not an expanding block")
        channels = [tap.conv[0][0].out_channels, last]
        self.extras = nn.ModuleList()
        for mid, out in cfg.extras:
            self.extras.append(nn.Sequential(ConvReLU6(channels[-1], mid, 1), ConvReLU6(mid, out, 3, 2)))
            channels.append(out)
        self.heads = nn.ModuleList(SSDHead(c, a, cfg.num_classes)
                                   for c, a in zip(channels, cfg.anchors_per_location, strict=True))
        side, n_anchors = cfg.image_size, 0
        for i, a in enumerate(cfg.anchors_per_location):  # map sides: /16, /32, then /2 per extra (ceil)
            side = math.ceil(cfg.image_size / 16) if i == 0 else math.ceil(side / 2)
            n_anchors += side * side * a
        self.register_buffer("anchors", torch.zeros(n_anchors, 4))  # (1917, 4) at 300 px

    def forward(self, pixel_values: Tensor) -> SSDOutput:
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3:
            raise ValueError(f"pixel_values must have shape (N, 3, H, W), got {tuple(pixel_values.shape)}")
        x, maps = pixel_values.to(self.anchors.dtype), []
        for i, layer in enumerate(self.features):
            if i == self.config.tap_block:
                x, h = layer(x, expansion=True)
                maps.append(h)  # (N, 576, 19, 19)
            else:
                x = layer(x)
        maps.append(x)  # (N, 1280, 10, 10)
        for extra in self.extras:
            maps.append(extra(maps[-1]))  # 5×5, 3×3, 2×2, 1×1
        boxes, logits = zip(*(head(m) for head, m in zip(self.heads, maps, strict=True)), strict=True)
        out = SSDOutput(torch.cat(boxes, 1), torch.cat(logits, 1))  # (N, 1917, 4), (N, 1917, 91)
        if out.box_encodings.shape[1] != self.anchors.shape[0]:
            S = self.config.image_size
            raise ValueError(f"input {tuple(pixel_values.shape[2:])} gives {out.box_encodings.shape[1]} anchors, the "
                             f"model has {self.anchors.shape[0]} (use {S}×{S})")
        return out

    @torch.inference_mode()
    def detect(self, pixel_values: Tensor) -> list[SSDDetections]:
        """Decoded, NMS-filtered detections of each image in the batch."""
        out = self(pixel_values)
        return postprocess(out.box_encodings.float(), out.class_logits.float(), self.anchors.float(), self.config)


# ------------------------------------------------------------------------------------------------------------
# Post-processing (TFLite_Detection_PostProcess)


def decode_boxes(encodings: Tensor, anchors: Tensor, cfg: SSDConfig) -> Tensor:
    """(…, A, 4) encodings (ty, tx, th, tw) + (A, 4) anchors (y, x, h, w) → (…, A, 4) ymin, xmin, ymax, xmax."""
    ya, xa, ha, wa = anchors.unbind(-1)
    ty, tx, th, tw = encodings.unbind(-1)
    yc, xc = ty / cfg.y_scale * ha + ya, tx / cfg.x_scale * wa + xa
    half_h, half_w = 0.5 * torch.exp(th / cfg.h_scale) * ha, 0.5 * torch.exp(tw / cfg.w_scale) * wa
    return torch.stack([yc - half_h, xc - half_w, yc + half_h, xc + half_w], dim=-1)


def iou(box: Tensor, boxes: Tensor) -> Tensor:
    """IoU of one (4,) box with each of (M, 4) boxes (ymin, xmin, ymax, xmax); 0 where either area is not positive."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (M,)
    h = (torch.minimum(box[2], boxes[:, 2]) - torch.maximum(box[0], boxes[:, 0])).clamp(min=0)
    w = (torch.minimum(box[3], boxes[:, 3]) - torch.maximum(box[1], boxes[:, 1])).clamp(min=0)
    inter = h * w
    out = inter / (area + areas - inter)
    return torch.where((area > 0) & (areas > 0), out, torch.zeros_like(out))


def greedy_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, score_threshold: float, max_out: int) -> Tensor:
    """Indices (≤ max_out,) of the boxes greedy NMS keeps, best first: scores ≥ ``score_threshold`` sorted (stable,
    descending); the best remaining box is kept and every later one overlapping it by IoU > threshold dropped."""
    cand = torch.nonzero(scores >= score_threshold).flatten()
    cand = cand[torch.sort(scores[cand], descending=True, stable=True).indices]  # (M,) best first
    active = torch.ones(len(cand), dtype=torch.bool)
    keep: list[int] = []
    for i in range(len(cand)):
        if len(keep) >= max_out:
            break
        if not active[i]:
            continue
        keep.append(int(cand[i]))
        later = cand[i + 1 :]
        active[i + 1 :] &= iou(boxes[cand[i]], boxes[later]) <= iou_threshold
    return torch.tensor(keep, dtype=torch.long)


def postprocess(encodings: Tensor, logits: Tensor, anchors: Tensor, cfg: SSDConfig) -> list[SSDDetections]:
    """(N, A, 4) encodings and (N, A, K + 1) logits → per image the kept boxes, classes and scores, best first."""
    boxes = decode_boxes(encodings, anchors, cfg)  # (N, A, 4)
    scores = torch.sigmoid(logits)[..., 1:]  # (N, A, K): background dropped
    out = []
    for b, s in zip(boxes, scores, strict=True):
        if not cfg.use_regular_nms:  # fast: one class-agnostic NMS over each anchor's best class
            best, label = s.max(dim=-1)  # (A,), first maximum on ties
            keep = greedy_nms(b, best, cfg.nms_iou_threshold, cfg.nms_score_threshold, cfg.max_detections)
            out.append(SSDDetections(b[keep], label[keep], best[keep]))
            continue
        found = []  # regular: NMS per class, then the best max_detections overall
        for c in range(s.shape[1]):
            keep = greedy_nms(b, s[:, c], cfg.nms_iou_threshold, cfg.nms_score_threshold, cfg.detections_per_class)
            found += [(float(s[k, c]), int(k), c) for k in keep.tolist()]
        found = sorted(found, key=lambda f: -f[0])[: cfg.max_detections]
        idx = torch.tensor([k for _, k, _ in found], dtype=torch.long)
        out.append(SSDDetections(b[idx].reshape(-1, 4), torch.tensor([c for *_, c in found], dtype=torch.long),
                                 torch.tensor([sc for sc, *_ in found], dtype=torch.float32)))
    return out


__all__ = ["SSD_PRESETS", "ConvReLU6", "FoldedInvertedResidual", "SSDConfig", "SSDDetections",
           "SSDMobileNetV2", "SSDOutput", "SameConv2d", "decode_boxes", "greedy_nms", "iou", "postprocess"]
