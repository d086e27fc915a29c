"""The ``config.json`` of a GPT-family checkpoint, both ways: omnigpt's ``GPTConfig`` ↔ Hugging Face's ``gpt2`` /
``openai-gpt`` configs (and omnigpt's own ``model_type: omnigpt`` for what HF cannot express), checked key by key
so a bad file is refused with an error naming the file and the key (``CheckpointError``)."""

from __future__ import annotations

import types
import typing
import warnings
from pathlib import Path
from typing import Any, Literal

from omnigpt.config import GPTConfig
from omnigpt.files.atomic import read_json_object

Head = Literal["base", "lm", "cls"]
CONFIG = "config.json"
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


def not_local_error(name: str) -> OSError:
    return OSError(
        f"{name!r} is not a local directory. omnigpt works offline and never downloads by default. To get weights: "
        f"(1) pass a directory holding config.json + model.safetensors (or pytorch_model.bin), e.g. one written by "
        f"omnigpt's or transformers' save_pretrained; or (2) on a machine with network access, fetch it from the "
        f"Hugging Face Hub first, e.g. `hf download {name} --local-dir ./{name.split('/')[-1]}`, or call "
        f"from_pretrained({name!r}, download=True) (needs huggingface_hub), then load the local directory.")


__all__ = ["ARCHITECTURES", "CONFIG", "CheckpointError", "Head", "config_from_dict", "hf_model_type", "load_config",
           "not_local_error", "to_hf_config"]
