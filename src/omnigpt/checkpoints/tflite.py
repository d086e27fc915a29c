"""TensorFlow Lite flatbuffers (``.tflite``) read into numpy: tensors, quantization, operators, options.

A ``.tflite`` file is one flatbuffer (schema ``tensorflow/lite/schema/schema.fbs``; identifier ``TFL3`` at byte 4)
holding subgraphs of tensors and operators, and a table of buffers with the constant tensors' bytes. We parse it
with the ``tflite`` package (the schema compiled to Python over ``flatbuffers``) and return plain frozen
dataclasses; a model builder (``checkpoints/ssd.py``) then maps tensors to modules with an explicit key table.

Quantization: uint8/int8 tensors carry ``scale`` and ``zero_point`` (one each per tensor, or one per channel along
``quantized_dimension``); ``dequantize`` gives ``(q - zero_point) * scale`` in float32. A convolution's int32 bias
has zero point 0 and scale ``input_scale * weight_scale``; the converter stores that scale on the bias tensor, and
``dequantize`` falls back to the product when a bias has none.

Never trusts the file: flatbuffers reads lazily and unchecked (a bad offset becomes ``struct.error`` or
``IndexError`` deep inside the schema code), so every read happens under one guard that turns such failures into a
``CheckpointError`` naming the file, and everything a later step relies on is checked here first: the identifier,
vector lengths against the file size (a corrupted count never makes a loop run for ever), tensor and buffer indices,
shapes, each constant's byte size against its shape and type, quantization vectors against the shape.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnigpt.checkpoints.hf_config import CheckpointError

# TensorType code → numpy dtype (the types a model of ours may hold; others are refused by name).
DTYPES: dict[int, np.dtype] = {0: np.dtype("<f4"), 1: np.dtype("<f2"), 2: np.dtype("<i4"), 3: np.dtype("u1"),
                               4: np.dtype("<i8"), 6: np.dtype("?"), 7: np.dtype("<i2"), 9: np.dtype("i1")}
ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
PADDINGS = {0: "SAME", 1: "VALID"}
MAX_ELEMENTS = 1 << 28  # no tensor of a mobile model comes near this; a corrupted shape must not allocate


@dataclass(frozen=True)
class TFLiteTensor:
    """One tensor: its index, name, shape, dtype, quantization and (constants only) its data as a read-only view."""

    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: tuple[float, ...] = ()  # () when not quantized
    zero_point: tuple[int, ...] = ()
    quantized_dimension: int = 0
    data: np.ndarray | None = field(default=None, repr=False)  # shaped like ``shape``; None for activations


@dataclass(frozen=True)
class TFLiteOp:
    """One operator: its builtin name (``CONV_2D``) or custom code, its tensor indices (-1: an absent optional
    input) and its options (``stride``, ``padding``, ``activation`` for convolutions; a custom op's flexbuffer map)."""

    index: int
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: dict[str, Any]


@dataclass(frozen=True)
class TFLiteGraph:
    """The first subgraph of a ``.tflite`` file: tensors, operators in execution order, graph inputs and outputs."""

    path: Path
    tensors: tuple[TFLiteTensor, ...]
    ops: tuple[TFLiteOp, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    def error(self, message: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: {message}")

    def op_input(self, op: TFLiteOp, i: int) -> TFLiteTensor:
        """Input ``i`` of ``op`` (an error naming the op when it has none)."""
        if i >= len(op.inputs) or op.inputs[i] < 0:
            raise self.error(f"operator {op.index} ({op.name}) has no input {i}")
        return self.tensors[op.inputs[i]]

    def constant(self, tensor: TFLiteTensor) -> np.ndarray:
        if tensor.data is None:
            raise self.error(f"tensor {tensor.index} ({tensor.name!r}) should be a constant but has no data")
        return tensor.data

    def dequantize(self, tensor: TFLiteTensor, input_scale: float | None = None) -> np.ndarray:
        """A constant as float32: ``(q - zero_point) * scale``, per tensor or per channel. An int32 bias without a
        scale of its own gets ``input_scale * weight_scale`` (pass the product as ``input_scale``)."""
        q = self.constant(tensor)
        if tensor.dtype.kind == "f":
            return q.astype(np.float32)
        if not tensor.scale:
            if input_scale is None:
                raise self.error(f"tensor {tensor.index} ({tensor.name!r}) is {tensor.dtype} with no scale")
            return q.astype(np.float32) * np.float32(input_scale)
        scale = np.asarray(tensor.scale, np.float32)
        zp = np.asarray(tensor.zero_point or (0,) * len(scale), np.float32)
        if len(scale) > 1:  # per channel: broadcast along the quantized dimension
            shape = [1] * q.ndim
            shape[tensor.quantized_dimension] = len(scale)
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        return ((q.astype(np.float32) - zp) * scale).astype(np.float32)


def read_tflite(path: str | Path) -> TFLiteGraph:
    """Parse ``path`` (one subgraph) into a ``TFLiteGraph``; any damage raises one ``CheckpointError`` line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    buf = path.read_bytes()
    if len(buf) < 8 or buf[4:8] != b"TFL3":
        raise CheckpointError(f"{path}: not a TFLite file (no 'TFL3' identifier at byte 4)")
    try:
        return _parse(buf, path)
    except CheckpointError:
        raise
    except (struct.error, IndexError, ValueError, TypeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{path}: not a readable TFLite file (truncated or corrupt?): {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None


def _count(n: int, size: int, what: str, path: Path) -> int:
    """A vector length from the file, refused when the file cannot hold that many entries of at least 4 bytes."""
    if not 0 <= n <= size // 4:
        raise CheckpointError(f"{path}: {what} claims {n:,} entries, more than the file's {size:,} bytes hold")
    return n


def _parse(buf: bytes, path: Path) -> TFLiteGraph:
    import tflite  # the TFLite schema compiled for Python (pinned in constraints.txt); only .tflite loading needs it

    size = len(buf)
    model = tflite.Model.GetRootAsModel(buf, 0)
    if _count(model.SubgraphsLength(), size, "subgraphs", path) != 1:
        raise CheckpointError(f"{path}: expected one subgraph, found {model.SubgraphsLength()}")
    n_buffers = _count(model.BuffersLength(), size, "buffers", path)
    codes = []
    for i in range(_count(model.OperatorCodesLength(), size, "operator codes", path)):
        oc = model.OperatorCodes(i)
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())  # schema v3a moved codes > 127 to a new field
        codes.append(oc.CustomCode().decode() if code == tflite.BuiltinOperator.CUSTOM else _builtin_name(code))
    g = model.Subgraphs(0)
    n_tensors = _count(g.TensorsLength(), size, "tensors", path)

    def index(i: int, what: str, optional: bool = False) -> int:
        if not (0 <= i < n_tensors or (optional and i == -1)):
            raise CheckpointError(f"{path}: {what} refers to tensor {i}, but there are {n_tensors}")
        return int(i)

    tensors = []
    for i in range(n_tensors):
        t = g.Tensors(i)
        name = t.Name().decode() if t.Name() is not None else f"tensor {i}"
        where = f"tensor {i} ({name!r})"
        if t.Type() not in DTYPES:
            raise CheckpointError(f"{path}: {where} has tensor type {t.Type()}, which omnigpt does not read")
        dtype = DTYPES[t.Type()]
        shape = tuple(int(d) for d in (t.ShapeAsNumpy() if t.ShapeLength() else ()))
        if any(d < 0 for d in shape) or math.prod(shape) > MAX_ELEMENTS:
            raise CheckpointError(f"{path}: {where} has an invalid shape {list(shape)}")
        if not 0 <= t.Buffer() < n_buffers:
            raise CheckpointError(f"{path}: {where} refers to buffer {t.Buffer()}, but there are {n_buffers}")
        data = _buffer_data(model.Buffers(t.Buffer()), buf, shape, dtype, path, where)
        scale, zero_point, qdim = _quantization(t.Quantization(), shape, path, where)
        tensors.append(TFLiteTensor(i, name, shape, dtype, scale, zero_point, qdim, data))

    ops = []
    for i in range(_count(g.OperatorsLength(), size, "operators", path)):
        op = g.Operators(i)
        if not 0 <= op.OpcodeIndex() < len(codes):
            raise CheckpointError(f"{path}: operator {i} has opcode index {op.OpcodeIndex()}, but there are "
                                  f"{len(codes)}")
        name = codes[op.OpcodeIndex()]
        ins = tuple(index(int(x), f"operator {i} ({name}) input", True) for x in _ints(op.InputsAsNumpy()))
        outs = tuple(index(int(x), f"operator {i} ({name}) output") for x in _ints(op.OutputsAsNumpy()))
        ops.append(TFLiteOp(i, name, ins, outs, _options(op, name, path, i)))
    inputs = tuple(index(int(x), "graph input") for x in _ints(g.InputsAsNumpy()))
    outputs = tuple(index(int(x), "graph output") for x in _ints(g.OutputsAsNumpy()))
    return TFLiteGraph(path, tuple(tensors), tuple(ops), inputs, outputs)


def _ints(vector: Any) -> Any:
    return () if isinstance(vector, int) else vector  # the schema code returns 0 for an absent vector


def _builtin_name(code: int) -> str:
    import tflite

    names = {v: k for k, v in vars(tflite.BuiltinOperator).items() if not k.startswith("_")}
    return names.get(code, f"BUILTIN_{code}")


def _buffer_data(b: Any, buf: bytes, shape: tuple[int, ...], dtype: np.dtype, path: Path, where: str
                 ) -> np.ndarray | None:
    """A constant's bytes as a read-only array shaped ``shape`` (None for an empty buffer: an activation)."""
    if b.Offset() > 1:  # files over 2 GB keep buffers after the flatbuffer, addressed by (offset, size)
        start, n = int(b.Offset()), int(b.Size())
        if start + n > len(buf):
            raise CheckpointError(f"{path}: {where}'s buffer (offset {start:,}, {n:,} B) runs past the end of the file")
        raw = np.frombuffer(buf, np.uint8, n, start)
    else:
        raw = b.DataAsNumpy()
        if isinstance(raw, int):  # no data vector
            return None
    if raw.size == 0:
        return None
    expected = math.prod(shape) * dtype.itemsize
    if raw.size != expected:
        raise CheckpointError(f"{path}: {where} holds {raw.size:,} bytes, its shape {list(shape)} × {dtype} needs "
                              f"{expected:,}")
    return raw.view(dtype).reshape(shape)


def _quantization(q: Any, shape: tuple[int, ...], path: Path, where: str
                  ) -> tuple[tuple[float, ...], tuple[int, ...], int]:
    """(scales, zero points, quantized dimension), checked: one per tensor or one per channel of that dimension."""
    if q is None or not q.ScaleLength():
        return (), (), 0
    scale = tuple(float(s) for s in q.ScaleAsNumpy())
    zp = tuple(int(z) for z in q.ZeroPointAsNumpy()) if q.ZeroPointLength() else (0,) * len(scale)
    dim = int(q.QuantizedDimension())
    if len(zp) != len(scale) or not all(math.isfinite(s) and s > 0 for s in scale):
        raise CheckpointError(f"{path}: {where} has invalid quantization (scales {scale[:4]}, zero points {zp[:4]})")
    if len(scale) > 1 and not (0 <= dim < len(shape) and shape[dim] == len(scale)):
        raise CheckpointError(f"{path}: {where} has {len(scale)} scales for dimension {dim} of shape {list(shape)}")
    return scale, zp, dim


def _options(op: Any, name: str, path: Path, i: int) -> dict[str, Any]:
    """The options omnigpt uses: convolutions' stride, padding, activation (and depth multiplier); a custom op's
    flexbuffer map; concatenation's axis."""
    import tflite
    from flatbuffers import flexbuffers

    if op.CustomOptionsLength():
        try:
            options = flexbuffers.Loads(op.CustomOptionsAsNumpy().tobytes())
        except Exception as e:  # flexbuffers fails in many ways on damaged bytes
            raise CheckpointError(f"{path}: operator {i} ({name}) has unreadable custom options ({e})") from None
        if not isinstance(options, dict):
            raise CheckpointError(f"{path}: operator {i} ({name}) custom options are not a map")
        return options
    table = op.BuiltinOptions()
    kinds = {"CONV_2D": tflite.Conv2DOptions, "DEPTHWISE_CONV_2D": tflite.DepthwiseConv2DOptions,
             "CONCATENATION": tflite.ConcatenationOptions, "ADD": tflite.AddOptions}
    if name not in kinds or table is None:
        return {}
    opt = kinds[name]()
    opt.Init(table.Bytes, table.Pos)
    if name == "CONCATENATION":
        return {"axis": int(opt.Axis()), "activation": ACTIVATIONS.get(opt.FusedActivationFunction(), "?")}
    if name == "ADD":
        return {"activation": ACTIVATIONS.get(opt.FusedActivationFunction(), "?")}
    out = {"stride": (int(opt.StrideH()), int(opt.StrideW())), "padding": PADDINGS.get(opt.Padding(), "?"),
           "activation": ACTIVATIONS.get(opt.FusedActivationFunction(), "?"),
           "dilation": (int(opt.DilationHFactor()), int(opt.DilationWFactor()))}
    if name == "DEPTHWISE_CONV_2D":
        out["depth_multiplier"] = int(opt.DepthMultiplier())
    return out


__all__ = ["TFLiteGraph", "TFLiteOp", "TFLiteTensor", "read_tflite"]
