"""The ``config.json`` of a GPT-family checkpoint, both ways: omnigpt's ``GPTConfig`` ↔ Hugging Face's ``gpt2`` /
``openai-gpt`` / ``qwen2`` configs (and omnigpt's own ``model_type: omnigpt`` for what HF cannot express), checked
key by key so a bad file is refused with an error naming the file and the key (``CheckpointError``).

``qwen2`` is the Llama-family config with q/k/v biases only (``qkv_bias``): transformers' ``Qwen2ForCausalLM``
hard-codes exactly that, so such a config is written as ``qwen2``; a Llama config without those biases stays
``omnigpt``."""

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
    ("qwen2", "base"): "Qwen2Model", ("qwen2", "lm"): "Qwen2ForCausalLM",
    ("qwen2", "cls"): "Qwen2ForSequenceClassification",
}
# GPTConfig fields a ``qwen2`` config must have (transformers' Qwen2 fixes them); the sizes are free.
QWEN2_SHAPE = {"position_embedding": "rope", "norm": "rmsnorm", "mlp": "swiglu", "activation": "silu", "bias": False,
               "qkv_bias": True, "norm_position": "pre", "final_layer_norm": True, "causal": True, "local_window": 0,
               "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False}
# omnigpt activation -> openai-gpt ``afn``. HF's openai-gpt "gelu" is the tanh approximation (as in OpenAI's
# finetune-transformer-lm), and it has no exact-erf GELU at all.
HF_MODEL_TYPES = ("gpt2", "openai-gpt", "qwen2")  # the transformers model types omnigpt reads and writes
_GPT1_AFN = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu", "silu": "silu", "swish": "swish"}



class CheckpointError(ValueError):
    """A checkpoint directory is unusable; the message names the file and the key."""


def _hf_blocker(cfg: GPTConfig, model_type: str) -> str | None:
    """Why ``cfg`` cannot be expressed as ``model_type`` (None when it can)."""
    if model_type == "qwen2":
        return next((f"{k}={getattr(cfg, k)!r}" for k, v in QWEN2_SHAPE.items() if getattr(cfg, k) != v), None)
    if cfg.qkv_bias and not cfg.bias:
        return "qkv_bias=True (Qwen2's q/k/v biases)"
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
    """``gpt2`` for GPT-2-shaped configs, ``openai-gpt`` for GPT-1-shaped ones, ``qwen2`` for Qwen2-shaped ones,
    else ``omnigpt``."""
    if _hf_blocker(cfg, "qwen2") is None:
        return "qwen2"
    model_type = "gpt2" if cfg.norm_position == "pre" else "openai-gpt"
    return model_type if _hf_blocker(cfg, model_type) is None else "omnigpt"


def to_hf_config(cfg: GPTConfig, head: Head = "lm", eos_token_id: int | None = None) -> dict[str, Any]:
    """``config.json`` contents: transformers' keys for this config plus the whole GPTConfig under ``omnigpt``."""
    model_type = hf_model_type(cfg)
    eos = eos_token_id if eos_token_id is not None else cfg.extra.get("eos_token_id")
    d: dict[str, Any] = {"architectures": [ARCHITECTURES[model_type, head]], "model_type": model_type}
    if model_type == "qwen2":
        d |= _qwen2_keys(cfg, eos)
        return d | _head_and_block(cfg, head)
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
    return d | _head_and_block(cfg, head)


def _head_and_block(cfg: GPTConfig, head: Head) -> dict[str, Any]:
    """The keys every model type ends with: classification labels, dtype, the whole GPTConfig under ``omnigpt``."""
    d: dict[str, Any] = {}
    if head == "cls":
        labels = cfg.extra.get("id2label") or {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
        d["id2label"], d["label2id"] = labels, {v: int(k) for k, v in labels.items()}
    d["dtype"] = "float32"
    d["omnigpt"] = cfg.to_dict()
    return d


def _qwen2_keys(cfg: GPTConfig, eos: int | None) -> dict[str, Any]:
    """transformers' ``Qwen2Config`` keys of a Qwen2-shaped config (RoPE without scaling, no sliding window)."""
    return {"vocab_size": cfg.vocab_size, "hidden_size": cfg.n_embd, "intermediate_size": cfg.mlp_hidden,
            "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
            "num_key_value_heads": cfg.kv_heads, "hidden_act": "silu", "max_position_embeddings": cfg.block_size,
            "initializer_range": cfg.initializer_range, "rms_norm_eps": cfg.layer_norm_epsilon,
            "tie_word_embeddings": cfg.tie_word_embeddings, "attention_dropout": cfg.dropout,
            "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
            "use_sliding_window": False, "sliding_window": None, "layer_types": ["full_attention"] * cfg.n_layer,
            "pad_token_id": cfg.pad_token_id, "bos_token_id": cfg.extra.get("bos_token_id", eos),
            "eos_token_id": eos, "use_cache": True}


def _qwen2_to_config(d: dict[str, Any], path: Path, get: Any, number: Any) -> dict[str, Any]:
    """GPTConfig keywords from transformers' Qwen2 keys (older files give ``rope_theta`` at the top level)."""
    if d.get("use_sliding_window"):
        raise CheckpointError(f"{path}: key 'use_sliding_window' = true is not supported by omnigpt")
    if get("hidden_act", "silu", str) not in ("silu", "swish"):
        raise CheckpointError(f"{path}: key 'hidden_act' = {d['hidden_act']!r} is not supported (Qwen2 uses silu)")
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if not isinstance(rope, dict) or rope.get("rope_type", rope.get("type", "default")) != "default":
        raise CheckpointError(f"{path}: key 'rope_parameters' = {rope!r} is not supported (plain RoPE only)")
    theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    if not isinstance(theta, int | float) or isinstance(theta, bool):
        raise CheckpointError(f"{path}: key 'rope_parameters' has rope_theta {theta!r} of the wrong type")
    return dict(QWEN2_SHAPE, vocab_size=get("vocab_size", 151936), block_size=get("max_position_embeddings", 32768),
                n_embd=get("hidden_size", 896), n_inner=get("intermediate_size", 4864),
                n_layer=get("num_hidden_layers", 24), n_head=get("num_attention_heads", 14),
                n_kv_head=get("num_key_value_heads", get("num_attention_heads", 14)), rope_theta=float(theta),
                layer_norm_epsilon=number("rms_norm_eps", 1e-6), dropout=number("attention_dropout", 0.0),
                initializer_range=number("initializer_range", 0.02),
                tie_word_embeddings=get("tie_word_embeddings", False, bool), pad_token_id=get("pad_token_id"))


def _hf_to_config(d: dict[str, Any], path: Path) -> GPTConfig:
    """GPTConfig from transformers' GPT-2 / GPT-1 / Qwen2 keys; unsupported values raise naming the key."""
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
    if model_type == "qwen2":
        kw: dict[str, Any] = _qwen2_to_config(d, path, get, number)
        kw["name"] = str(d.get("_name_or_path") or model_type)
        return _labelled_config(d, kw, path, get)
    p = {k: number(k, 0.1) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    if len(set(p.values())) > 1:
        warnings.warn(f"{path}: dropouts {p} differ; omnigpt uses one rate, resid_pdrop={p['resid_pdrop']} "
                      "(inference is unaffected)", stacklevel=3)
    kw = dict(
        name=str(d.get("_name_or_path") or model_type), vocab_size=get("vocab_size", 50257 if model_type == "gpt2"
                                                                        else 40478),
        block_size=get("n_positions", 1024 if model_type == "gpt2" else 512), n_embd=get("n_embd", 768),
        n_layer=get("n_layer", 12), n_head=get("n_head", 12), dropout=p["resid_pdrop"],
        layer_norm_epsilon=number("layer_norm_epsilon", 1e-5), initializer_range=number("initializer_range", 0.02),
        tie_word_embeddings=get("tie_word_embeddings", True, bool), pad_token_id=get("pad_token_id"))
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
    return _labelled_config(d, kw, path, get)


def _labelled_config(d: dict[str, Any], kw: dict[str, Any], path: Path, get: Any) -> GPTConfig:
    """``GPTConfig(**kw)`` plus what every model type shares: labels, bos/eos ids; errors name the file."""
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
    if model_type not in (None, *HF_MODEL_TYPES, "omnigpt"):
        raise CheckpointError(f"{path}: key 'model_type' is {model_type!r}; supported: 'gpt2', 'openai-gpt', "
                              "'qwen2' (and directories omnigpt wrote)")
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
    if model_type in HF_MODEL_TYPES:  # someone may have edited the HF keys: never silently diverge
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


__all__ = ["ARCHITECTURES", "CONFIG", "HF_MODEL_TYPES", "QWEN2_SHAPE", "CheckpointError", "Head", "config_from_dict",
           "hf_model_type", "load_config", "not_local_error", "to_hf_config"]
