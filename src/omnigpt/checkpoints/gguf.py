"""GGUF checkpoints (llama.cpp's format) of Llama-family models (``llama``, ``qwen2``), read into omnigpt's ``GPT``.

A GGUF file is one self-describing blob: key/value metadata (architecture sizes, the tokenizer's vocabulary,
merges and chat template) followed by tensors, most of them block-quantized (Q4_1: 32 weights share an fp16 scale
and minimum, 4 bits each; Q8_0: 32 weights share an fp16 scale, 8 bits each). We read it with the ``gguf`` package
(llama.cpp's own Python reader): ``GGUFReader`` memory-maps the file and ``gguf.quants.dequantize`` turns every
tensor back into float32, so the loaded model equals what ``transformers`` builds from the same file
(``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``) weight for weight.

The conversion is one explicit key table (``GGUF_KEYS``, llama.cpp tensor name → omnigpt key and the part of a
fused omnigpt matrix it fills; ``OMNIGPT_KEYS`` is its inverse), with the special cases listed:

* omnigpt fuses what llama.cpp keeps apart: ``attn.c_attn`` = Q, K, V rows stacked (and Qwen2's three biases
  ``attn_{q,k,v}.bias`` into its bias); ``mlp.c_fc`` = gate, up;
* for ``llama`` files, llama.cpp's converter permutes the rows of Q and K (per head, it interleaves the two halves of
  the head so its RoPE can rotate adjacent pairs (2i, 2i+1)); omnigpt and transformers rotate pairs (i, i + hs/2),
  so ``unpermute_qk`` undoes it — with ``n_head`` heads for Q and ``n_kv_head`` for K. ``qwen2`` files are not
  permuted (llama.cpp runs them with NEOX-style "rotate half" RoPE, as omnigpt does), so nothing is undone;
* ``output.weight`` is absent when the head is tied to ``token_embd.weight`` (SmolLM2), present when not (Qwen2.5);
* ggml lists shapes fastest dimension first ([in, out]); the reader's numpy arrays are (out, in) like nn.Linear.

The ``GPTConfig`` comes from the ``<architecture>.*`` metadata (the same keys for both); an option omnigpt cannot
reproduce (RoPE scaling, partial rotary, experts, extra tensors) raises a ``GGUFError`` naming the file and the key
instead of being ignored.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from omnigpt.config import GPTConfig
from omnigpt.models.gpt import GPT

# general.architecture values this reader understands → GPTConfig fields beyond the Llama options they imply.
ARCHITECTURES: dict[str, dict[str, Any]] = {"llama": {}, "qwen2": {"qkv_bias": True}}
PERMUTED_QK = ("llama",)  # architectures whose Q/K rows llama.cpp's converter interleaved (undone on load)

# llama.cpp tensor name ({i} = layer) → (omnigpt key, part of the fused omnigpt tensor or None for a whole one).
GGUF_KEYS: dict[str, tuple[str, str | None]] = {
    "token_embd.weight": ("transformer.wte.weight", None),
    "output_norm.weight": ("transformer.ln_f.weight", None),
    "output.weight": ("lm_head.weight", None),  # absent when tied to token_embd
    "blk.{i}.attn_norm.weight": ("transformer.h.{i}.ln_1.weight", None),
    "blk.{i}.attn_q.weight": ("transformer.h.{i}.attn.c_attn.weight", "q"),
    "blk.{i}.attn_k.weight": ("transformer.h.{i}.attn.c_attn.weight", "k"),
    "blk.{i}.attn_v.weight": ("transformer.h.{i}.attn.c_attn.weight", "v"),
    "blk.{i}.attn_q.bias": ("transformer.h.{i}.attn.c_attn.bias", "q"),  # Qwen2 only (qkv_bias)
    "blk.{i}.attn_k.bias": ("transformer.h.{i}.attn.c_attn.bias", "k"),
    "blk.{i}.attn_v.bias": ("transformer.h.{i}.attn.c_attn.bias", "v"),
    "blk.{i}.attn_output.weight": ("transformer.h.{i}.attn.c_proj.weight", None),
    "blk.{i}.ffn_norm.weight": ("transformer.h.{i}.ln_2.weight", None),
    "blk.{i}.ffn_gate.weight": ("transformer.h.{i}.mlp.c_fc.weight", "gate"),
    "blk.{i}.ffn_up.weight": ("transformer.h.{i}.mlp.c_fc.weight", "up"),
    "blk.{i}.ffn_down.weight": ("transformer.h.{i}.mlp.c_proj.weight", None),
}
OMNIGPT_KEYS: dict[tuple[str, str | None], str] = {v: k for k, v in GGUF_KEYS.items()}  # the inverse
FUSED_ORDER = {"q": 0, "k": 1, "v": 2, "gate": 0, "up": 1}  # row order of the parts inside a fused tensor
_PATTERNS = [(re.compile(re.escape(k).replace(r"\{i\}", r"(\d+)") + "$"), k) for k in GGUF_KEYS]


class GGUFError(ValueError):
    """A GGUF file is unreadable or describes a model omnigpt cannot reproduce; the message names file and key."""


def open_gguf(path: str | Path) -> Any:
    """A ``gguf.GGUFReader`` of ``path`` (parses every metadata field: ~4 s for a 49k-token vocabulary, so loaders
    open a file once and pass the reader around)."""
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: file not found")
    try:
        return _checked_reader_class()(path)
    except Exception as e:  # bad magic, truncated header, unknown value types
        raise GGUFError(f"{path}: not a readable GGUF file ({type(e).__name__}: {e})") from None


@functools.cache
def _checked_reader_class() -> type:
    """``gguf.GGUFReader`` with every read checked against the file's size.

    gguf's reader slices its memory map without checking that the bytes exist: past the end of the file it gets
    empty arrays and goes on, so a corrupted array length (a u64) makes it loop over empty elements, growing a
    list at each, practically for ever. Here a read past the end is an error, and an array's length is checked
    against the bytes left before its elements are read. (Overrides two helpers of gguf 0.19's reader, pinned in
    constraints.txt; tests/fuzz exercises them.)"""
    import gguf  # optional dependency: only GGUF loading needs it

    class CheckedGGUFReader(gguf.GGUFReader):
        def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> np.ndarray:
            arr = super()._get(offset, dtype, count, override_order)
            if len(arr) != int(count):
                raise ValueError(f"{int(count)} × {np.dtype(dtype).name} at offset {offset} run past the end of "
                                 f"the file ({len(self.data)} bytes)")
            return arr

        def _get_field_parts(self, orig_offs: int, raw_type: int) -> Any:
            if raw_type == gguf.GGUFValueType.ARRAY:  # u32 item type, u64 length, then the items
                item_type, length = int(self._get(orig_offs, np.uint32)[0]), int(self._get(orig_offs + 4, np.uint64)[0])
                scalar = self.gguf_scalar_to_np.get(item_type)  # type: ignore[call-overload]
                least = np.dtype(scalar).itemsize if scalar is not None else 8  # a string's u64 length at least
                if length * least > len(self.data) - orig_offs - 12:
                    raise ValueError(f"array of {length} items at offset {orig_offs} is larger than the file")
            return super()._get_field_parts(orig_offs, raw_type)

    return CheckedGGUFReader


def read_metadata(path: str | Path, arrays: bool = True) -> dict[str, Any]:
    """Every metadata key → its Python value (str, int, float, bool, list). ``arrays=False`` leaves long arrays
    (the vocabulary, the merges) out, which is much faster."""
    path = Path(path)
    return _metadata(open_gguf(path), path, arrays)


def _metadata(reader: Any, path: Path, arrays: bool = True) -> dict[str, Any]:
    keys = [k for k, f in reader.fields.items() if arrays or len(f.data) <= 64]
    return read_fields(reader, path, keys)


def read_fields(reader: Any, path: str | Path, keys: Any) -> dict[str, Any]:
    """The values of those ``keys`` that the file has (absent keys are left out)."""
    out: dict[str, Any] = {}
    for key in keys:
        field = reader.fields.get(key)
        if field is None:
            continue
        try:
            out[key] = field.contents()
        except Exception as e:
            raise GGUFError(f"{path}: key {key!r} cannot be decoded ({e})") from None
    return out


# ------------------------------------------------------------------------------------------------------------
# Config


def config_from_metadata(meta: dict[str, Any], path: str | Path = "<gguf>", name: str | None = None) -> GPTConfig:
    """``GPTConfig`` of a ``llama`` or ``qwen2`` GGUF from its ``<architecture>.*`` keys (presence of
    ``output.weight`` decides tying, so pass ``tie_word_embeddings`` through ``replace`` when it matters;
    ``load_gguf`` does)."""
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise GGUFError(f"{path}: key 'general.architecture' is {arch!r}; omnigpt reads {tuple(ARCHITECTURES)}")

    def get(key: str, kind: type | tuple[type, ...] = int, default: Any = None) -> Any:
        full = f"{arch}.{key}"
        value = meta.get(full, default)
        if value is None:
            raise GGUFError(f"{path}: key {full!r} is missing")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise GGUFError(f"{path}: key {full!r} has value {value!r} of the wrong type")
        return value

    for key in ("rope.scaling.type", "rope.scaling.factor", "expert_count", "attention.sliding_window"):
        value = meta.get(f"{arch}.{key}")
        if value not in (None, "none", 0, 1.0):
            raise GGUFError(f"{path}: key {arch + '.' + key!r} = {value!r} is not supported by omnigpt")
    n_embd, n_head = get("embedding_length"), get("attention.head_count")
    n_kv_head = get("attention.head_count_kv", default=n_head)
    head_size = n_embd // n_head if n_head else 0
    for key in ("rope.dimension_count", "attention.key_length", "attention.value_length"):
        value = meta.get(f"{arch}.{key}", head_size)
        if value != head_size:
            raise GGUFError(f"{path}: key {arch + '.' + key!r} = {value!r}, but omnigpt needs the head size "
                            f"embedding_length / head_count = {head_size} (full rotary, no separate head width)")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = meta.get(f"{arch}.vocab_size", len(tokens) if isinstance(tokens, list) else None)
    if not isinstance(vocab, int):
        raise GGUFError(f"{path}: key {arch + '.vocab_size'!r} is missing (and no tokenizer.ggml.tokens)")
    try:
        return GPTConfig(
            name=name or str(meta.get("general.name", "gguf")), vocab_size=vocab,
            block_size=get("context_length"), n_layer=get("block_count"), n_head=n_head, n_kv_head=n_kv_head,
            n_embd=n_embd, n_inner=get("feed_forward_length"),
            rope_theta=float(get("rope.freq_base", (int, float), 10000.0)),
            layer_norm_epsilon=float(get("attention.layer_norm_rms_epsilon", float)),
            position_embedding="rope", norm="rmsnorm", mlp="swiglu", activation="silu", bias=False,
            pad_token_id=meta.get("tokenizer.ggml.padding_token_id"), **ARCHITECTURES[arch],
            extra={k: meta[f"tokenizer.ggml.{k}"] for k in ("bos_token_id", "eos_token_id")
                   if f"tokenizer.ggml.{k}" in meta})
    except ValueError as e:
        raise GGUFError(f"{path}: the {arch}.* keys describe an invalid model: {e}") from None


# ------------------------------------------------------------------------------------------------------------
# Tensors


def unpermute_qk(w: Tensor, n_head: int) -> Tensor:
    """Undo llama.cpp's Q/K row permutation: rows (head, pair i, half) → (head, half, pair i).

    llama.cpp's converter wrote ``w.reshape(nh, 2, hs/2, in).swapaxes(1, 2)`` so that rows 2i, 2i+1 of a head
    are the channels i, i + hs/2 that "rotate half" RoPE pairs up; this is its inverse."""
    out_f = w.shape[0]
    return w.reshape(n_head, out_f // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _dequantize(tensor: Any, path: Path) -> np.ndarray:
    import gguf

    expect = tuple(int(n) for n in reversed(tensor.shape.tolist()))  # ggml lists the fastest dimension first
    try:
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)  # float32, numpy order (…, out, in)
        return np.array(array, dtype=np.float32).reshape(expect)  # a writable copy (the reader maps the file)
    except NotImplementedError:
        raise GGUFError(f"{path}: key {tensor.name!r} uses {tensor.tensor_type.name}, which the gguf package cannot "
                        f"dequantize") from None
    except (ValueError, TypeError, IndexError) as e:  # the bytes do not make whole blocks of the stated shape
        raise GGUFError(f"{path}: key {tensor.name!r} ({tensor.tensor_type.name}, shape {expect}) cannot be "
                        f"dequantized ({e})") from None


def read_state_dict(reader: Any, cfg: GPTConfig, path: Path, permuted_qk: bool = True) -> dict[str, Tensor]:
    """omnigpt state dict (float32) from the file's tensors through ``GGUF_KEYS``; every tensor must map, every
    key must be filled, every shape must match ``cfg``. ``permuted_qk``: the file's Q/K rows are in llama.cpp's
    interleaved order (``llama`` files; not ``qwen2``)."""
    parts: dict[str, dict[str, Tensor]] = {}
    state: dict[str, Tensor] = {}
    for tensor in reader.tensors:
        hit = next(((m, t) for pattern, t in _PATTERNS if (m := pattern.match(tensor.name))), None)
        if hit is None:
            raise GGUFError(f"{path}: key {tensor.name!r} is a tensor omnigpt has no place for")
        match, template = hit
        layer = match.group(1) if match.groups() else None
        if layer is not None and int(layer) >= cfg.n_layer:
            raise GGUFError(f"{path}: key {tensor.name!r} is beyond block_count {cfg.n_layer}")
        key, part = GGUF_KEYS[template]
        key = key.replace("{i}", layer) if layer is not None else key
        w = torch.from_numpy(_dequantize(tensor, path))
        if part in ("q", "k") and permuted_qk:
            heads = cfg.n_head if part == "q" else cfg.kv_heads
            if w.dim() == 0 or w.shape[0] % (2 * heads):
                raise GGUFError(f"{path}: key {tensor.name!r} has shape {tuple(w.shape)}, not rows of {heads} "
                                f"heads of even size")
            w = unpermute_qk(w, heads)
        if part is None:
            state[key] = w
        else:
            parts.setdefault(key, {})[part] = w
    for key, pieces in parts.items():
        template = _template(key)
        want = sorted((p for (k, p) in OMNIGPT_KEYS if k == template and p is not None), key=FUSED_ORDER.get)
        missing = [p for p in want if p not in pieces]
        if missing:
            raise GGUFError(f"{path}: key {_gguf_name(key, missing[0])!r} is missing")
        shapes = [tuple(pieces[p].shape) for p in want]
        rank = 1 if key.endswith(".bias") else 2
        if any(len(s) != rank or s[1:] != shapes[0][1:] for s in shapes):
            raise GGUFError(f"{path}: keys {[_gguf_name(key, p) for p in want]} have shapes {shapes}, which do not "
                            f"stack into one {'vector' if rank == 1 else 'matrix'}")
        state[key] = torch.cat([pieces[p] for p in want])  # (q; k; v) or (gate; up) rows
    return state


def _template(key: str) -> str:
    return re.sub(r"\.h\.\d+\.", ".h.{i}.", key)


def _gguf_name(key: str, part: str | None = None) -> str:
    """The llama.cpp name of omnigpt ``key`` (its ``part``, else its first part): for error messages."""
    template = _template(key)
    name = OMNIGPT_KEYS.get((template, part)) or next((g for (k, _), g in OMNIGPT_KEYS.items() if k == template), key)
    match = re.search(r"\.h\.(\d+)\.", key)
    return name.replace("{i}", match.group(1)) if match else name


def load_gguf(path: str | Path, dtype: torch.dtype | None = torch.float32, quantize: str | None = None,
              name: str | None = None, reader: Any = None) -> GPT:
    """The GGUF file's model as an omnigpt ``GPT`` in eval mode, dequantized to float32 (or ``dtype``).

    ``quantize="int4"`` then re-packs the blocks' matrices into omnigpt's int4 kernels (group 32, the same grid
    as Q4_1's 32-weight blocks, scales in bf16) and the head into int8; ``"int8"`` uses int8 everywhere.
    ``reader``: an already open ``open_gguf(path)``."""
    path = Path(path)
    reader = reader if reader is not None else open_gguf(path)
    meta = _metadata(reader, path, arrays=False)
    arch = meta.get("general.architecture")
    names = {t.name for t in reader.tensors}
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if f"{arch}.vocab_size" not in meta and tokens is not None:
        meta["tokenizer.ggml.tokens"] = [None] * len(tokens.data)  # only its length is needed here
    cfg = config_from_metadata(meta, path, name).replace(tie_word_embeddings="output.weight" not in names)
    # Before any model is built (a corrupted block_count of 10^9 would build 10^9 blocks): the layers must exist.
    layers = {int(m.group(1)) for n in names if (m := re.match(r"blk\.(\d+)\.", n))}
    first_missing = next((i for i in range(cfg.n_layer) if i not in layers), None)  # stops at the first gap
    if first_missing is not None:
        raise GGUFError(f"{path}: key 'blk.{first_missing}.attn_norm.weight' is missing ({arch}.block_count is "
                        f"{cfg.n_layer})")
    state = read_state_dict(reader, cfg, path, permuted_qk=arch in PERMUTED_QK)
    with torch.device("meta"):
        model = GPT(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight")
    for key in expected:
        if key not in state:
            raise GGUFError(f"{path}: key {_gguf_name(key)!r} is missing")
    for key, t in state.items():
        if key not in expected:  # e.g. q/k/v biases in a file whose architecture has none
            raise GGUFError(f"{path}: key {_gguf_name(key)!r} has no place in a {arch} model")
        if tuple(t.shape) != expected[key]:
            raise GGUFError(f"{path}: tensor for {key!r} has shape {tuple(t.shape)}, the metadata implies "
                            f"{expected[key]}")
    if dtype is not None:
        state = {k: t.to(dtype) for k, t in state.items()}
    model.load_state_dict(state, strict=not cfg.tie_word_embeddings, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.transformer.wte.weight  # assign=True replaced the shared Parameter
    model.eval()
    return model if quantize is None else quantize_model(model, quantize)


def quantize_model(model: GPT, kind: str) -> GPT:
    """Weight-only int4 (blocks; the head int8) or int8 (everything) in place, for faster CPU decoding.

    Q4_1 stores each row in blocks of 32 weights on a 16-level grid (scale d, minimum m); omnigpt's int4 groups
    are the same 32 weights on a 16-level grid w = (q − 8)·scale + zero, so re-packing a Q4_1 block finds its
    grid again (exactly, but for the bf16 rounding of scale and zero point)."""
    from omnigpt.kernels.quantize import Int8Linear, quantize

    if kind not in ("int4", "int8"):
        raise ValueError(f"quantize must be 'int4', 'int8' or None, got {kind!r}")
    quantize(model.transformer.h, bits=4 if kind == "int4" else 8)
    # The head is the Q8_0 token embedding: 4 bits would lose what the file keeps, so it stays 8-bit.
    model.lm_head = Int8Linear(model.lm_head)  # type: ignore[assignment]
    return model


__all__ = ["GGUF_KEYS", "GGUFError", "OMNIGPT_KEYS", "config_from_metadata", "load_gguf", "open_gguf", "quantize_model",
           "read_fields", "read_metadata", "read_state_dict", "unpermute_qk"]
