"""Hugging Face checkpoints both ways, without ``transformers`` at run time.

Reading: a directory with ``config.json`` (``model_type`` ``gpt2`` or ``openai-gpt``, or one omnigpt wrote) and
``model.safetensors`` / ``pytorch_model.bin`` (read with ``weights_only=True``), sharded (``*.index.json``) or not.
Writing: the same format, so ``transformers`` loads what omnigpt saved and computes the same outputs, plus an
``"omnigpt"`` block in ``config.json`` holding the full ``GPTConfig`` so omnigpt-only options round-trip.

The weight conversion is one explicit key table per model type (``TO_HF``) with the reverse derived from it
(``FROM_HF``), as torchtitan's state-dict adapters do, and its special cases listed beside it:

* keys come with or without the ``transformer.`` prefix; GPT-1 names its embeddings ``tokens_embed`` and
  ``positions_embed`` (omnigpt: ``wte``, ``wpe``);
* the causal-mask buffers ``h.N.attn.bias`` and ``h.N.attn.masked_bias`` of old checkpoints are dropped;
* HF's ``Conv1D`` stores ``c_attn``, ``c_proj``, ``c_fc`` weights as (in, out); ``nn.Linear`` wants (out, in);
* ``lm_head.weight`` is usually absent: the head is tied to ``wte``.

Every file, key and shape is checked before a model is built, so a bad directory raises a ``ValueError`` that
names the file and the key, and nothing is half-loaded. A config option omnigpt cannot reproduce raises instead of
being ignored; a config ``transformers`` cannot reproduce (GPT-3's banded layers, no biases, ...) is saved with
``model_type: "omnigpt"``, which ``transformers`` refuses rather than loading something different.

The ``GPT2*``/``OpenAIGPT*`` classes with ``transformers``' names, call signatures and output fields live in
``omnigpt/hf/``; every other model kind goes through ``checkpoints/pretrained.py``.
"""

from __future__ import annotations

import json
import re
import types
import typing
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from omnigpt.config import GPTConfig
from omnigpt.files.atomic import read_json_object, verify_manifest
from omnigpt.models.gpt import GPT, GPTForSequenceClassification, GPTModel

if TYPE_CHECKING:
    from omnigpt.text.tokenizer import Tokenizer

Head = Literal["base", "lm", "cls"]
AnyGPT = GPT | GPTForSequenceClassification | GPTModel
AnyGPTTypes = (GPT, GPTForSequenceClassification, GPTModel)
CONFIG = "config.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",  # in order of preference
                "pytorch_model.bin", "pytorch_model.bin.index.json")
ARCHITECTURES = {  # (model_type, head) -> transformers class name
    ("gpt2", "base"): "GPT2Model", ("gpt2", "lm"): "GPT2LMHeadModel", ("gpt2", "cls"): "GPT2ForSequenceClassification",
    ("openai-gpt", "base"): "OpenAIGPTModel", ("openai-gpt", "lm"): "OpenAIGPTLMHeadModel",
    ("openai-gpt", "cls"): "OpenAIGPTForSequenceClassification",
    ("omnigpt", "base"): "GPTModel", ("omnigpt", "lm"): "GPT", ("omnigpt", "cls"): "GPTForSequenceClassification",
}
# omnigpt activation -> openai-gpt ``afn``. HF's openai-gpt "gelu" is the tanh approximation (as in OpenAI's
# finetune-transformer-lm), and it has no exact-erf GELU at all.
_GPT1_AFN = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu", "silu": "silu", "swish": "swish"}


class CheckpointError(ValueError):
    """A checkpoint directory is unusable; the message names the file and the key."""


def not_local_error(name: str) -> OSError:
    return OSError(
        f"{name!r} is not a local directory. omnigpt works offline and never downloads by default. To get weights: "
        f"(1) pass a directory holding config.json + model.safetensors (or pytorch_model.bin), e.g. one written by "
        f"omnigpt's or transformers' save_pretrained; or (2) on a machine with network access, fetch it from the "
        f"Hugging Face Hub first, e.g. `hf download {name} --local-dir ./{name.split('/')[-1]}`, or call "
        f"from_pretrained({name!r}, download=True) (needs huggingface_hub), then load the local directory.")


# ------------------------------------------------------------------------------------------------------------
# Configs


def _hf_blocker(cfg: GPTConfig, model_type: str) -> str | None:
    """Why ``cfg`` cannot be expressed as ``model_type`` (None when it can)."""
    if cfg.local_window:
        return "local_window (GPT-3 banded attention)"
    llama = {"position_embedding": (cfg.position_embedding, "learned"), "norm": (cfg.norm, "layernorm"),
             "mlp": (cfg.mlp, "gelu"), "n_kv_head": (cfg.n_kv_head or cfg.n_head, cfg.n_head),
             "causal": (cfg.causal, True)}
    for key, (have, gpt) in llama.items():
        if have != gpt:
            return f"{key}={have!r} (Llama-family / encoder options)"
    if not cfg.bias:
        return "bias=False"
    if model_type == "gpt2":
        if (cfg.norm_position, cfg.final_layer_norm) != ("pre", True):
            return f"norm_position={cfg.norm_position!r} with final_layer_norm={cfg.final_layer_norm}"
        return None
    if (cfg.norm_position, cfg.final_layer_norm) != ("post", False):
        return f"norm_position={cfg.norm_position!r} with final_layer_norm={cfg.final_layer_norm}"
    if cfg.activation not in _GPT1_AFN:
        return f"activation={cfg.activation!r}"
    if cfg.mlp_hidden != 4 * cfg.n_embd or not cfg.scale_attn_weights or cfg.scale_attn_by_inverse_layer_idx:
        return "n_inner / attention scaling options"
    return None


def hf_model_type(cfg: GPTConfig) -> str:
    """``gpt2`` for GPT-2-shaped configs, ``openai-gpt`` for GPT-1-shaped ones, else ``omnigpt``."""
    model_type = "gpt2" if cfg.norm_position == "pre" else "openai-gpt"
    return model_type if _hf_blocker(cfg, model_type) is None else "omnigpt"


def to_hf_config(cfg: GPTConfig, head: Head = "lm", eos_token_id: int | None = None) -> dict[str, Any]:
    """``config.json`` contents: transformers' keys for this config plus the whole GPTConfig under ``omnigpt``."""
    model_type = hf_model_type(cfg)
    eos = eos_token_id if eos_token_id is not None else cfg.extra.get("eos_token_id")
    d: dict[str, Any] = {"architectures": [ARCHITECTURES[model_type, head]], "model_type": model_type}
    common = {"vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_embd": cfg.n_embd,
              "n_layer": cfg.n_layer, "n_head": cfg.n_head, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
              "attn_pdrop": cfg.dropout, "layer_norm_epsilon": cfg.layer_norm_epsilon,
              "initializer_range": cfg.initializer_range, "tie_word_embeddings": cfg.tie_word_embeddings,
              "pad_token_id": cfg.pad_token_id, "bos_token_id": cfg.extra.get("bos_token_id", eos),
              "eos_token_id": eos}
    if model_type == "openai-gpt":
        d |= common | {"afn": _GPT1_AFN[cfg.activation]}
    else:
        d |= common | {"n_inner": cfg.n_inner, "activation_function": cfg.activation,
                       "scale_attn_weights": cfg.scale_attn_weights,
                       "scale_attn_by_inverse_layer_idx": cfg.scale_attn_by_inverse_layer_idx,
                       "reorder_and_upcast_attn": False, "use_cache": True}
    if head == "cls":
        labels = cfg.extra.get("id2label") or {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
        d["id2label"], d["label2id"] = labels, {v: int(k) for k, v in labels.items()}
    d["dtype"] = "float32"
    d["omnigpt"] = cfg.to_dict()
    return d


def _hf_to_config(d: dict[str, Any], path: Path) -> GPTConfig:
    """GPTConfig from transformers' GPT-2 / GPT-1 keys; unsupported values raise naming the key."""
    model_type = d.get("model_type")

    def get(key: str, default: Any = None, types: type | tuple[type, ...] = int) -> Any:
        v = d.get(key, default)
        if v is not None and (not isinstance(v, types) or isinstance(v, bool) and types is int):
            raise CheckpointError(f"{path}: key {key!r} has value {v!r} of the wrong type")
        return v

    def number(key: str, default: float) -> float:  # null counts as absent
        v = get(key, default, (int, float))
        return float(default if v is None else v)

    def refuse(key: str, ok: Any, why: str) -> None:
        if d.get(key, ok) != ok:
            raise CheckpointError(f"{path}: key {key!r} = {d[key]!r} is not supported by omnigpt ({why})")

    refuse("add_cross_attention", False, "GPT-2 with cross-attention is an encoder-decoder")
    refuse("is_encoder_decoder", False, "decoder-only models only")
    if d.get("problem_type") == "multi_label_classification":
        raise CheckpointError(f"{path}: key 'problem_type' = 'multi_label_classification' is not supported")
    p = {k: number(k, 0.1) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    if len(set(p.values())) > 1:
        warnings.warn(f"{path}: dropouts {p} differ; omnigpt uses one rate, resid_pdrop={p['resid_pdrop']} "
                      "(inference is unaffected)", stacklevel=3)
    kw: dict[str, Any] = dict(
        name=str(d.get("_name_or_path") or model_type), vocab_size=get("vocab_size", 50257 if model_type == "gpt2"
                                                                        else 40478),
        block_size=get("n_positions", 1024 if model_type == "gpt2" else 512), n_embd=get("n_embd", 768),
        n_layer=get("n_layer", 12), n_head=get("n_head", 12), dropout=p["resid_pdrop"],
        layer_norm_epsilon=number("layer_norm_epsilon", 1e-5), initializer_range=number("initializer_range", 0.02),
        tie_word_embeddings=get("tie_word_embeddings", True, bool), pad_token_id=get("pad_token_id"))
    labels = d.get("id2label")
    if isinstance(labels, dict) and labels:
        kw["num_labels"] = len(labels)
        if any(v != f"LABEL_{k}" for k, v in labels.items()):
            kw.setdefault("extra", {})["id2label"] = {str(k): v for k, v in labels.items()}
    elif "num_labels" in d:
        kw["num_labels"] = get("num_labels")
    for key in ("bos_token_id", "eos_token_id"):
        if isinstance(d.get(key), int):
            kw.setdefault("extra", {})[key] = d[key]
    if model_type == "gpt2":
        act = get("activation_function", "gelu_new", str)
        kw |= dict(n_inner=get("n_inner"), activation=act,
                   scale_attn_weights=get("scale_attn_weights", True, bool),
                   scale_attn_by_inverse_layer_idx=get("scale_attn_by_inverse_layer_idx", False, bool))
        # reorder_and_upcast_attn only upcasts QKᵀ/softmax to fp32 under mixed precision: omnigpt's softmax is in
        # fp32 already, so the option is honoured (fp32 results are the same).
    else:
        afn = get("afn", "gelu", str)
        inverse = {"gelu": "gelu_new", "relu": "relu", "silu": "silu", "swish": "swish"}
        if afn not in inverse:
            raise CheckpointError(f"{path}: key 'afn' = {afn!r} is not supported (known: {sorted(inverse)})")
        kw |= dict(norm_position="post", final_layer_norm=False, activation=inverse[afn])
    try:
        return GPTConfig(**kw)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _has_type(value: Any, hint: Any) -> bool:
    """``value`` (parsed JSON) fits the ``GPTConfig`` field type ``hint`` (ints pass for floats, bools only for
    bools)."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint in (int, float):
        return isinstance(value, int | float if hint is float else int) and not isinstance(value, bool)
    if hint in (bool, str):
        return isinstance(value, hint)
    return isinstance(value, origin or hint)


def config_from_dict(d: dict[str, Any], path: str | Path = CONFIG) -> GPTConfig:
    """GPTConfig from a ``config.json`` dict: omnigpt's own block when present (checked against the HF keys),
    else transformers' GPT-2 / GPT-1 keys, else a bare ``GPTConfig.save`` dict."""
    path = Path(path)
    model_type = d.get("model_type")
    if not isinstance(d.get("architectures", []), list):
        raise CheckpointError(f"{path}: key 'architectures' must be a list of class names")
    if model_type not in (None, "gpt2", "openai-gpt", "omnigpt"):
        raise CheckpointError(f"{path}: key 'model_type' is {model_type!r}; supported: 'gpt2', 'openai-gpt' "
                              "(and directories omnigpt wrote)")
    own = d.get("omnigpt") if model_type is not None else d
    if own is None:
        if model_type == "omnigpt":
            raise CheckpointError(f"{path}: model_type 'omnigpt' needs the key 'omnigpt'")
        return _hf_to_config(d, path)
    if not isinstance(own, dict):
        raise CheckpointError(f"{path}: key 'omnigpt' must be an object")
    hints = typing.get_type_hints(GPTConfig)
    for key, value in own.items():  # GPTConfig checks ranges, not types: a list for a float fails in the model
        if key in hints and not _has_type(value, hints[key]):
            raise CheckpointError(f"{path}: key {key!r} has value {value!r} of the wrong type ({hints[key]})")
    try:
        cfg = GPTConfig.from_dict(own, source=str(path))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    if model_type in ("gpt2", "openai-gpt"):  # someone may have edited the HF keys: never silently diverge
        if hf_model_type(cfg) != model_type:
            raise CheckpointError(f"{path}: key 'model_type' is {model_type!r} but the 'omnigpt' block describes a "
                                  f"{hf_model_type(cfg)!r} model")
        for key, value in to_hf_config(cfg).items():
            if key in d and key not in ("architectures", "omnigpt", "dtype", "bos_token_id", "eos_token_id") \
                    and d[key] != value:
                raise CheckpointError(f"{path}: key {key!r} = {d[key]!r} contradicts the 'omnigpt' block ({value!r})")
    return cfg


def _read_config(directory: Path) -> dict[str, Any]:
    return read_json_object(directory / CONFIG, CheckpointError, f" (a checkpoint directory needs {CONFIG})")


def load_config(directory: str | Path) -> GPTConfig:
    """The GPTConfig of a checkpoint directory (omnigpt or Hugging Face)."""
    d = Path(directory)
    if not d.is_dir():
        raise not_local_error(str(directory))
    return config_from_dict(_read_config(d), d / CONFIG)


# ------------------------------------------------------------------------------------------------------------
# Weights: reading files


def _load_file(path: Path, map_location: str | torch.device) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(path, device=str(map_location))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: cannot read safetensors file ({e})") from None
    else:
        try:
            sd = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as e:  # truncated zip, pickle refused by weights_only, not a torch file...
            raise CheckpointError(f"{path}: cannot read with torch.load(weights_only=True) ({e})") from None
        if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()):
            raise CheckpointError(f"{path}: expected a dict of name -> tensor")
    for key, t in sd.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: tensor {key!r} contains NaN or infinite values")
    return sd


def read_weights(directory: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Tensor],
                                                                                     dict[str, str]]:
    """All tensors of a checkpoint (one file or shards) and, per key, the file it came from."""
    name = next((n for n in WEIGHT_FILES if (directory / n).is_file()), None)
    if name is None:
        raise CheckpointError(f"{directory}: no weights file (expected one of {', '.join(WEIGHT_FILES)})")
    if not name.endswith(".index.json"):
        sd = _load_file(directory / name, map_location)
        return sd, dict.fromkeys(sd, name)
    index_path = directory / name
    try:
        weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path}: not a shard index with a 'weight_map' ({e!r})") from None
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path}: key 'weight_map' must be an object")
    state: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    for shard in sorted(set(weight_map.values())):
        if not isinstance(shard, str) or Path(shard).name != shard or shard.startswith("."):
            raise CheckpointError(f"{index_path}: shard name {shard!r} must be a plain file name in the directory")
        if not (directory / shard).is_file():
            raise CheckpointError(f"{index_path}: shard {shard!r} is missing")
        part = _load_file(directory / shard, map_location)
        for key in [k for k, s in weight_map.items() if s == shard]:
            if key not in part:
                raise CheckpointError(f"{directory / shard}: key {key!r} listed in {name} is missing")
        for key, t in part.items():
            if weight_map.get(key) != shard:
                raise CheckpointError(f"{directory / shard}: key {key!r} is not listed for this shard in {name}")
            state[key], source[key] = t, shard
    return state, source


# ------------------------------------------------------------------------------------------------------------
# Weights: one key table per model type, the reverse derived from it

# omnigpt key → Hugging Face key; ``{i}`` stands for the layer index. omnigpt's module names follow the GPT-2
# checkpoint, so GPT-2's table is the identity and GPT-1's renames only its embeddings.
_LAYER_KEYS = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
               "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
               "mlp.c_proj.weight", "mlp.c_proj.bias")
_GPT2_KEYS = {k: k for k in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
                             "transformer.ln_f.bias", "lm_head.weight", "score.weight",
                             *(f"transformer.h.{{i}}.{k}" for k in _LAYER_KEYS))}
TO_HF: dict[str, dict[str, str]] = {
    "gpt2": _GPT2_KEYS,
    "omnigpt": _GPT2_KEYS,  # omnigpt-only configs (GPT-3 banded layers, ...) keep GPT-2's names
    "openai-gpt": {**_GPT2_KEYS, "transformer.wte.weight": "transformer.tokens_embed.weight",
                   "transformer.wpe.weight": "transformer.positions_embed.weight"},
}
FROM_HF: dict[str, dict[str, str]] = {mt: {v: k for k, v in table.items()} for mt, table in TO_HF.items()}
# The special cases. HF's Conv1D stores these weights (in, out); nn.Linear wants (out, in).
CONV1D = {f"transformer.h.{{i}}.{k}" for k in ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                                               "mlp.c_proj.weight")}
DROPPED = {"transformer.h.{i}.attn.bias", "transformer.h.{i}.attn.masked_bias"}  # old checkpoints' mask buffers
_LAYER = re.compile(r"\.h\.(\d+)\.")
_HEADS = ("lm_head.", "score.")


def prefixed(key: str) -> str:
    """The one place the ``transformer.`` prefix is handled: a bare backbone (transformers' ``GPT2Model``,
    omnigpt's ``GPTModel``) names its tensors without it; every table key has it."""
    return key if key.startswith(("transformer.", *_HEADS)) else "transformer." + key


def unprefixed(key: str) -> str:
    return key.removeprefix("transformer.")


def _template(key: str) -> tuple[str, str | None]:
    """``transformer.h.3.ln_1.weight`` → (``transformer.h.{i}.ln_1.weight``, ``"3"``)."""
    m = _LAYER.search(key)
    return (key[: m.start()] + ".h.{i}." + key[m.end() :], m.group(1)) if m else (key, None)


def _lookup(table: dict[str, str], key: str) -> str | None:
    t, i = _template(key)
    mapped = table.get(t)
    return None if mapped is None else mapped.replace("{i}", i or "")


def from_hf_key(key: str, model_type: str = "gpt2") -> str | None:
    """HF checkpoint key (with or without the prefix) → omnigpt key; None for a buffer to drop. A key the table
    does not know comes back prefixed and unchanged, to be reported as unexpected."""
    key = prefixed(key)
    if _template(key)[0] in DROPPED:
        return None
    return _lookup(FROM_HF.get(model_type, FROM_HF["gpt2"]), key) or key


def to_hf_key(key: str, model_type: str) -> str:
    """omnigpt key (prefixed) → HF key: the table's inverse."""
    return _lookup(TO_HF[model_type], key) or key


def is_conv1d(key: str) -> bool:
    return _template(key)[0] in CONV1D


def hf_state_dict(model: AnyGPT) -> dict[str, Tensor]:
    """The model's tensors under HF names, Conv1D weights transposed to (in, out), a tied head left out."""
    model_type = hf_model_type(model.config)
    sd = {prefixed(k): v for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    out = {}
    for k, v in sd.items():
        v = v.detach().to("cpu")
        out[to_hf_key(k, model_type)] = (v.t() if is_conv1d(k) else v).contiguous()
    if isinstance(model, GPTModel):  # a bare backbone is saved without the prefix, like transformers' GPT2Model
        out = {unprefixed(k): v for k, v in out.items()}
    return out


def _convert(state: dict[str, Tensor], source: dict[str, str], model_type: str | None,
             ) -> tuple[dict[str, Tensor], dict[str, tuple[str, str]]]:
    """Rename (and transpose) checkpoint tensors to omnigpt keys, remembering each one's file and original key;
    two spellings of one key are an error. ``model_type`` None: omnigpt's own state-dict layout."""
    out: dict[str, Tensor] = {}
    where: dict[str, tuple[str, str]] = {}
    for key, t in state.items():
        k = prefixed(key) if model_type is None else from_hf_key(key, model_type)
        if k is None:
            continue
        if k in out:
            raise CheckpointError(f"{source[key]}: key {key!r} duplicates another spelling of {k!r}")
        out[k] = t.t() if (model_type is not None and is_conv1d(k) and t.dim() == 2) else t
        where[k] = (source[key], key)
    return out, where


def _pick_head(cfg_dict: dict[str, Any], state: dict[str, Tensor]) -> Head:
    archs = cfg_dict.get("architectures") or []
    if "score.weight" in state or any("SequenceClassification" in str(a) for a in archs):
        return "cls"
    return "lm"


def load_pretrained(directory: str | Path, map_location: str | torch.device = "cpu",
                    dtype: torch.dtype | None = torch.float32, head: Head | None = None,
                    model_class: type[nn.Module] | None = None) -> Any:
    """Load an omnigpt or Hugging Face GPT-2 / GPT-1 directory as ``GPT`` (LM head) or
    ``GPTForSequenceClassification`` (``score`` head); ``head="base"`` gives the bare ``GPTModel``.

    The model comes back in eval mode. Errors name the file and key; nothing is built until all checks pass."""
    d = Path(directory)
    if not d.is_dir():
        raise not_local_error(str(directory))
    try:
        verify_manifest(d)  # omnigpt-written directories carry SHA-256s: flipped bytes are caught here
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    cfg_dict = _read_config(d)
    cfg = config_from_dict(cfg_dict, d / CONFIG)
    native = "model_type" not in cfg_dict  # a bare GPTConfig.save dict: weights in omnigpt's own layout
    raw, source = read_weights(d, map_location)
    state, where = _convert(raw, source, None if native else cfg_dict["model_type"])
    head = head or _pick_head(cfg_dict, state)
    # Drop heads the requested class does not have (transformers does the same: base from LM, LM from classifier).
    for key, owner in (("lm_head.weight", "lm"), ("score.weight", "cls")):
        if head != owner:
            state.pop(key, None)
    if head == "lm":
        if "lm_head.weight" not in state:
            cfg = cfg.replace(tie_word_embeddings=True)  # the head is tied when the checkpoint has none
        elif cfg.tie_word_embeddings:
            lm, wte = state.pop("lm_head.weight"), state.get("transformer.wte.weight")
            if wte is not None and not torch.equal(lm, wte):
                raise CheckpointError(f"{d / where['lm_head.weight'][0]}: key 'lm_head.weight' differs from the "
                                      "token embedding but config.json says tie_word_embeddings=true")

    if model_class is None:
        model_class = {"base": GPTModel, "lm": GPT, "cls": GPTForSequenceClassification}[head]
    # config.json may be corrupt: a layer count the weights do not have is refused before 10^7 blocks are built,
    # sizes torch cannot even describe (n_embd = 2^40) are an error naming the file.
    layers = {int(i) for k in state if (i := _template(k)[1]) is not None}
    if (gap := next((i for i in range(cfg.n_layer) if i not in layers), None)) is not None:
        raise CheckpointError(f"{d / CONFIG}: n_layer is {cfg.n_layer}, but the weights have no layer {gap}")
    try:
        with torch.device("meta"):
            model = model_class(cfg)
    except (RuntimeError, TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"{d / CONFIG}: describes a model omnigpt cannot build ({e})") from None
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if head == "base":
        expected = {prefixed(k): s for k, s in expected.items()}
    if head == "lm" and cfg.tie_word_embeddings:
        expected.pop("lm_head.weight")
    files = ", ".join(sorted({str(d / f) for f in source.values()}))
    missing = [k for k in expected if k not in state]
    if head == "cls" and missing == ["score.weight"]:
        warnings.warn(f"{files}: no 'score.weight'; the classification head starts from random weights",
                      stacklevel=2)
    elif missing:
        names = [to_hf_key(k, hf_model_type(cfg)) for k in missing[:8]]
        raise CheckpointError(f"{files}: missing keys {names}{' ...' if len(missing) > 8 else ''}")
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        names = [where[k][1] for k in unexpected[:8]]
        raise CheckpointError(f"{d / where[unexpected[0]][0]}: unexpected keys {names} for a {cfg.n_layer}-layer "
                              f"{model_class.__name__}")
    for k, t in state.items():
        if tuple(t.shape) != tuple(expected[k]):
            conv = " (Conv1D, stored (in, out))" if is_conv1d(k) and not native else ""
            shape, want = tuple(t.shape), tuple(expected[k])
            if conv:
                shape, want = shape[::-1], want[::-1]
            raise CheckpointError(f"{d / where[k][0]}: key {where[k][1]!r}{conv} has shape {shape}, the config "
                                  f"implies {want}")
    if "score.weight" in missing:
        if expected["score.weight"].numel() > sum(t.numel() for t in state.values()):
            raise CheckpointError(f"{d / CONFIG}: num_labels {cfg.num_labels} would make a new classification head "
                                  f"larger than all the checkpoint's weights together")
        state["score.weight"] = torch.randn(expected["score.weight"]) * cfg.initializer_range
    if dtype is not None:
        state = {k: t.to(dtype) if t.is_floating_point() else t for k, t in state.items()}
    if head == "base":
        state = {unprefixed(k): t for k, t in state.items()}
    model.load_state_dict(state, strict=not (head == "lm" and cfg.tie_word_embeddings), assign=True)
    if head == "lm" and cfg.tie_word_embeddings:
        model.lm_head.weight = model.transformer.wte.weight  # assign=True replaced the shared Parameter
    return model.eval()


# ------------------------------------------------------------------------------------------------------------
# Saving


def write_pretrained(model: AnyGPT, directory: str | Path, tokenizer: Tokenizer | None = None) -> None:
    """Write config.json + model.safetensors (+ tokenizer files) into an existing directory, not atomically:
    for callers that commit a larger directory themselves (the trainer adds its state)."""
    from safetensors.torch import save_file

    head: Head = "cls" if isinstance(model, GPTForSequenceClassification) else \
        "lm" if isinstance(model, GPT) else "base"
    if not isinstance(model, GPT | GPTForSequenceClassification | GPTModel):
        raise TypeError(f"save_pretrained expects an omnigpt GPT model, got {type(model).__name__}")
    d = Path(directory)
    eos = tokenizer.eos_token_id if tokenizer is not None else None
    config = to_hf_config(model.config, head, eos)
    tensors = hf_state_dict(model)
    config["dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
    (d / CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(d)


__all__ = ["CheckpointError", "config_from_dict", "hf_model_type", "hf_state_dict", "load_config", "load_pretrained",
           "read_weights", "to_hf_config", "write_pretrained"]
