"""Hypothesis strategies that corrupt a seed: byte-level operations (biased towards the seed's hot offsets) and, for
JSON files and safetensors headers, structural edits of the JSON value tree.

A case is a ``Case``: the seed's files with one of them replaced by its mutated bytes, and a readable list of the
operations applied (saved beside every failure, so a crash can be replayed and understood).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from .seeds import Seed

# Values that break length / count / offset arithmetic: zero, one, powers of two and their neighbours, the signed
# and unsigned extremes of every width.
INTERESTING = (0, 1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 1000, 4096, 0x7FFF, 0x8000, 0xFFFF,
               0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63,
               (1 << 64) - 2, (1 << 64) - 1)
WIDTHS = (1, 2, 4, 8)
# Keys worth adding to JSON objects: the readers look them up (config.json, safetensors headers, manifests).
KNOWN_KEYS = ("num_labels", "n_layer", "n_head", "n_embd", "n_inner", "vocab_size", "n_positions", "id2label",
              "label2id", "problem_type", "add_cross_attention", "is_encoder_decoder", "afn", "activation_function",
              "model_type", "omnigpt", "architectures", "tie_word_embeddings", "layer_norm_epsilon", "pad_token_id",
              "eos_token_id", "bos_token_id", "resid_pdrop", "embd_pdrop", "attn_pdrop", "block_size", "n_kv_head",
              "dtype", "shape", "data_offsets", "__metadata__", "suppress_ids", "suppress_ids_begin", "lang_ids",
              "alignment_heads", "weight_map", "scale_attn_weights", "local_window", "rope_theta")


@dataclass
class Case:
    seed: str
    target_file: str
    files: dict[str, bytes]
    ops: list[Any]

    def describe(self) -> str:
        return f"seed {self.seed}, file {self.target_file}: " + "; ".join(map(repr, self.ops))


# ------------------------------------------------------------------------------------------------------------
# Bytes


def apply_ops(data: bytes, ops: list[tuple]) -> bytes:
    """Apply byte operations in order; positions wrap around the current length."""
    buf = bytearray(data)
    for op in ops:
        kind = op[0]
        n = len(buf)
        pos = op[1] % (n + 1) if len(op) > 1 and isinstance(op[1], int) else 0
        if kind == "truncate":
            del buf[pos:]
        elif kind == "flip" and n:
            buf[pos % n] ^= op[2]
        elif kind == "set_int":
            _, _, width, value, order = op
            raw = (value % (1 << (8 * width))).to_bytes(width, order)
            buf[pos : pos + width] = raw
        elif kind == "add_int" and n:
            _, _, width, delta = op
            pos = min(pos, max(n - width, 0))
            old = int.from_bytes(buf[pos : pos + width], "little")
            buf[pos : pos + width] = ((old + delta) % (1 << (8 * width))).to_bytes(width, "little")[: n - pos]
        elif kind == "insert":
            buf[pos:pos] = op[2]
        elif kind == "delete":
            del buf[pos : pos + op[2]]
        elif kind == "copy" and n:
            src = op[2] % n
            buf[pos:pos] = buf[src : src + op[3]]
        elif kind == "zero_tail":
            buf[pos:] = bytes(n - pos)
        elif kind == "replace":
            buf = bytearray(op[1])
    return bytes(buf)


@st.composite
def byte_ops(draw: st.DrawFn, size: int, hot: tuple[int, ...]) -> list[tuple]:
    """1-4 byte operations on a file of ``size`` bytes; positions are hot offsets or uniform."""
    last = max(size - 1, 0)
    position = st.one_of(st.sampled_from(hot), st.integers(0, last)) if hot else st.integers(0, last)
    value = st.one_of(st.sampled_from(INTERESTING), st.sampled_from((size, size + 1, size - 1, 2 * size)),
                      st.integers(0, (1 << 64) - 1), st.integers(-16, 16))
    op = st.one_of(
        st.tuples(st.just("truncate"), position),
        st.tuples(st.just("flip"), position, st.integers(1, 255)),
        st.tuples(st.just("set_int"), position, st.sampled_from(WIDTHS), value, st.sampled_from(("little", "big"))),
        st.tuples(st.just("set_int"), position, st.sampled_from(WIDTHS), value, st.just("little")),
        st.tuples(st.just("add_int"), position, st.sampled_from(WIDTHS), st.integers(-16, 16)),
        st.tuples(st.just("insert"), position, st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("delete"), position, st.integers(1, 256)),
        st.tuples(st.just("copy"), position, st.integers(0, last), st.integers(1, 512)),
        st.tuples(st.just("zero_tail"), position),
    )
    ops = draw(st.lists(op, min_size=1, max_size=4))
    if draw(st.integers(0, 49)) == 0:  # now and then: random bytes instead of the file
        ops = [("replace", draw(st.binary(max_size=512)))]
    return ops


# ------------------------------------------------------------------------------------------------------------
# JSON


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value[:16]):
            out += _paths(v, (*prefix, i))
    return out


def _json_scalars() -> st.SearchStrategy[Any]:
    big = st.sampled_from((10**30, -(10**30), 2**63, 2**64, -1, -(2**31), 2**31, 2**53 + 1))
    floats = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from((1e308, -0.0, 0.5)))
    return st.one_of(st.none(), st.booleans(), st.sampled_from(INTERESTING), big, st.integers(-(10**6), 10**6),
                     floats, st.text(max_size=12), st.sampled_from(("", "gpt2", "omnigpt", "llama", "F16", "BF16",
                                                                     "I64", "U8", "F64", "bool")))


def json_values() -> st.SearchStrategy[Any]:
    return st.recursive(_json_scalars(), lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=6), inner,
                                                     max_size=3)), max_leaves=6)


def _set(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    return doc


def _get(doc: Any, path: tuple) -> Any:
    for key in path:
        doc = doc[key]
    return doc


@st.composite
def json_ops(draw: st.DrawFn, doc: Any) -> list[tuple]:
    """1-3 edits of a JSON tree: replace a value, delete a key / item, add a key, wrap a value in a list."""
    paths = _paths(doc)
    path = st.sampled_from(paths)
    op = st.one_of(
        st.tuples(st.just("json_replace"), path, json_values()),
        st.tuples(st.just("json_replace"), path, st.sampled_from(INTERESTING)),
        st.tuples(st.just("json_delete"), path),
        st.tuples(st.just("json_add"), path, st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), json_values()),
        st.tuples(st.just("json_wrap"), path),
        st.tuples(st.just("json_scale"), path, st.sampled_from((-1, 0, 2, 1000, 10**9, 10**18))),
    )
    return draw(st.lists(op, min_size=1, max_size=3))


def apply_json_ops(doc: Any, ops: list[tuple]) -> Any:
    doc = json.loads(json.dumps(doc))  # a private copy
    for op in ops:
        kind, path = op[0], op[1]
        try:
            current = _get(doc, path)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed the path
        if kind == "json_replace":
            doc = _set(doc, path, op[2])
        elif kind == "json_delete" and path:
            parent = _get(doc, path[:-1])
            del parent[path[-1]]
        elif kind == "json_add" and isinstance(current, dict):
            current[op[2]] = op[3]
        elif kind == "json_wrap":
            doc = _set(doc, path, [current])
        elif kind == "json_scale" and isinstance(current, int | float) and not isinstance(current, bool):
            doc = _set(doc, path, current * op[2])
        elif kind == "json_scale" and isinstance(current, list):
            doc = _set(doc, path, [v * op[2] if isinstance(v, int) and not isinstance(v, bool) else v
                                   for v in current])
    return doc


def dump_json(doc: Any) -> bytes:
    return json.dumps(doc, allow_nan=True).encode()


# ------------------------------------------------------------------------------------------------------------
# Cases


def _safetensors_parts(data: bytes) -> tuple[Any, bytes] | None:
    (n,) = struct.unpack_from("<Q", data, 0)
    try:
        return json.loads(data[8 : 8 + n]), data[8 + n :]
    except ValueError:
        return None


@st.composite
def cases(draw: st.DrawFn, seeds: tuple[Seed, ...]) -> Case:
    """One corrupted copy of one seed: its files, one of them (by the seed's weights) mutated."""
    seed = draw(st.sampled_from(seeds))
    names = [name for name, weight in seed.mutable for _ in range(weight)]
    name = draw(st.sampled_from(names))
    data = seed.files[name]
    ops: list[Any] = []
    structural = draw(st.integers(0, 9)) < 6  # JSON-carrying files: mostly structural edits
    if name in seed.json_files and structural:
        doc = json.loads(data)
        edits = draw(json_ops(doc))
        data = dump_json(apply_json_ops(doc, edits))
        ops += edits
    elif name in seed.safetensors_files and structural and draw(st.booleans()):
        header, payload = _safetensors_parts(data)  # type: ignore[misc]
        edits = draw(json_ops(header))
        raw = dump_json(apply_json_ops(header, edits))
        keep_length = draw(st.integers(0, 4)) == 0  # sometimes the old header length stays
        length = struct.unpack_from("<Q", data)[0] if keep_length else len(raw)
        data = struct.pack("<Q", length) + raw + payload
        ops += edits + ([("header_length_kept", length)] if keep_length else [])
    if not ops or draw(st.integers(0, 3)) == 0:
        hot = seed.hot.get(name, ()) if not ops else ()  # offsets are only known in the untouched file
        edits = draw(byte_ops(len(data), hot))
        data = apply_ops(data, edits)
        ops += edits
    files = dict(seed.files)
    files[name] = data
    return Case(seed.name, name, files, ops)


def fixed_case(seed: Seed, name: str, ops: list[tuple]) -> Case:
    """A hand-written case (the default suite's fixed malformed files): byte ops, or JSON ops on a JSON file."""
    data = seed.files[name]
    if ops and ops[0][0].startswith("json_"):
        data = dump_json(apply_json_ops(json.loads(data), ops))
    else:
        data = apply_ops(data, ops)
    files = dict(seed.files)
    files[name] = data
    return Case(seed.name, name, files, list(ops))


__all__ = ["Case", "apply_json_ops", "apply_ops", "byte_ops", "cases", "fixed_case", "json_ops"]
