"""Hugging Face checkpoints both ways, without ``transformers`` at run time.

Reading: a directory with ``config.json`` (``model_type`` ``gpt2``, ``openai-gpt`` or ``qwen2``, or one omnigpt
wrote) and ``model.safetensors`` / ``pytorch_model.bin`` (read with ``weights_only=True``), sharded or not.
Writing: the same format, so ``transformers`` loads what omnigpt saved and computes the same outputs, plus an
``"omnigpt"`` block in ``config.json`` holding the full ``GPTConfig`` so omnigpt-only options round-trip.

The weight conversion is one explicit key table per model type (``TO_HF``) with the reverse derived from it
(``FROM_HF``), as torchtitan's state-dict adapters do, and its special cases listed beside it:

* keys come with or without the ``transformer.`` prefix; GPT-1 names its embeddings ``tokens_embed`` and
  ``positions_embed`` (omnigpt: ``wte``, ``wpe``);
* the causal-mask buffers ``h.N.attn.bias`` and ``h.N.attn.masked_bias`` of old checkpoints are dropped;
* HF's ``Conv1D`` stores ``c_attn``, ``c_proj``, ``c_fc`` weights as (in, out); ``nn.Linear`` wants (out, in);
* ``lm_head.weight`` is usually absent: the head is tied to ``wte``;
* Qwen2 (``model.layers.N.self_attn.q_proj`` ...) keeps apart what omnigpt fuses: ``c_attn`` (weight and bias) is
  split into q, k, v rows on saving and stacked on loading, ``c_fc`` into gate, up (``FUSED``); no Conv1D there.

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
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from omnigpt.checkpoints.hf_config import (
    CONFIG,
    CheckpointError,
    Head,
    _read_config,
    config_from_dict,
    hf_model_type,
    not_local_error,
    to_hf_config,
)
from omnigpt.files.atomic import verify_manifest
from omnigpt.models.gpt import GPT, GPTForSequenceClassification, GPTModel

if TYPE_CHECKING:
    from omnigpt.text.tokenizer import Tokenizer

AnyGPT = GPT | GPTForSequenceClassification | GPTModel
AnyGPTTypes = (GPT, GPTForSequenceClassification, GPTModel)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",  # in order of preference
                "pytorch_model.bin", "pytorch_model.bin.index.json")






















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
# Qwen2: Llama's names. A tuple is one fused omnigpt tensor whose rows HF keeps as separate tensors, in that order.
_QWEN2_KEYS: dict[str, str | tuple[str, ...]] = {
    "transformer.wte.weight": "model.embed_tokens.weight", "transformer.ln_f.weight": "model.norm.weight",
    "lm_head.weight": "lm_head.weight", "score.weight": "score.weight",
    "transformer.h.{i}.ln_1.weight": "model.layers.{i}.input_layernorm.weight",
    "transformer.h.{i}.attn.c_attn.weight": tuple(f"model.layers.{{i}}.self_attn.{p}_proj.weight" for p in "qkv"),
    "transformer.h.{i}.attn.c_attn.bias": tuple(f"model.layers.{{i}}.self_attn.{p}_proj.bias" for p in "qkv"),
    "transformer.h.{i}.attn.c_proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "transformer.h.{i}.ln_2.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "transformer.h.{i}.mlp.c_fc.weight": tuple(f"model.layers.{{i}}.mlp.{p}_proj.weight" for p in ("gate", "up")),
    "transformer.h.{i}.mlp.c_proj.weight": "model.layers.{i}.mlp.down_proj.weight",
}
FUSED: dict[str, dict[str, tuple[str, ...]]] = {"qwen2": {k: v for k, v in _QWEN2_KEYS.items() if isinstance(v, tuple)}}
TO_HF["qwen2"] = {k: v if isinstance(v, str) else v[0] for k, v in _QWEN2_KEYS.items()}  # a fused key: its first part
FROM_HF: dict[str, dict[str, str]] = {mt: {v: k for k, v in table.items()} for mt, table in TO_HF.items()}
FROM_HF["qwen2"] |= {part: k for k, parts in FUSED["qwen2"].items() for part in parts}
# The special cases. HF's Conv1D stores these weights (in, out); nn.Linear wants (out, in) — in GPT-1/2 only.
CONV1D = {f"transformer.h.{{i}}.{k}" for k in ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                                               "mlp.c_proj.weight")}
CONV1D_TYPES = ("gpt2", "openai-gpt", "omnigpt")
DROPPED = {"transformer.h.{i}.attn.bias", "transformer.h.{i}.attn.masked_bias"}  # old checkpoints' mask buffers
_LAYER = re.compile(r"\.(h|layers)\.(\d+)\.")
_HEADS = ("lm_head.", "score.")


def prefixed(key: str) -> str:
    """The one place the ``transformer.`` prefix is handled: a bare backbone (transformers' ``GPT2Model``,
    omnigpt's ``GPTModel``) names its tensors without it; every table key has it."""
    return key if key.startswith(("transformer.", *_HEADS)) else "transformer." + key


def unprefixed(key: str) -> str:
    return key.removeprefix("transformer.")


def _qwen2_prefixed(key: str) -> str:
    """A Qwen2 key as ``Qwen2ForCausalLM`` names it: the bare ``Qwen2Model`` leaves out ``model.``."""
    return key if key.startswith(("model.", *_HEADS)) else "model." + key


def _template(key: str) -> tuple[str, str | None]:
    """``transformer.h.3.ln_1.weight`` → (``transformer.h.{i}.ln_1.weight``, ``"3"``); HF's ``layers.3`` too."""
    m = _LAYER.search(key)
    return (key[: m.start()] + f".{m.group(1)}.{{i}}." + key[m.end() :], m.group(2)) if m else (key, None)


def _lookup(table: dict[str, str], key: str) -> str | None:
    t, i = _template(key)
    mapped = table.get(t)
    return None if mapped is None else mapped.replace("{i}", i or "")


def from_hf_key(key: str, model_type: str = "gpt2") -> str | None:
    """HF checkpoint key (with or without the prefix) → omnigpt key; None for a buffer to drop. A key the table
    does not know comes back prefixed and unchanged, to be reported as unexpected. A part of a fused tensor (Qwen2's
    ``q_proj``) maps to the fused key (``c_attn``)."""
    if model_type == "qwen2":
        key = _qwen2_prefixed(key)
        return _lookup(FROM_HF[model_type], key) or key
    key = prefixed(key)
    if _template(key)[0] in DROPPED:
        return None
    return _lookup(FROM_HF.get(model_type, FROM_HF["gpt2"]), key) or key


def to_hf_key(key: str, model_type: str) -> str:
    """omnigpt key (prefixed) → HF key: the table's inverse."""
    return _lookup(TO_HF[model_type], key) or key


def is_conv1d(key: str) -> bool:
    return _template(key)[0] in CONV1D


def _fused_sizes(template: str, model: AnyGPT) -> list[int]:
    """Rows of each part of a fused tensor: c_attn = q (C), k, v (kv_heads · hs each); c_fc = gate, up (H each)."""
    cfg = model.config
    if ".attn.c_attn." in template:
        return [cfg.n_embd, cfg.kv_heads * cfg.head_size, cfg.kv_heads * cfg.head_size]
    return [cfg.mlp_hidden, cfg.mlp_hidden]


def hf_state_dict(model: AnyGPT) -> dict[str, Tensor]:
    """The model's tensors under HF names, Conv1D weights transposed to (in, out), fused ones split, a tied head
    left out."""
    model_type = hf_model_type(model.config)
    fused = FUSED.get(model_type, {})
    sd = {prefixed(k): v for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    out = {}
    for k, v in sd.items():
        v = v.detach().to("cpu")
        template, layer = _template(k)
        if template in fused:  # (q; k; v) rows → q_proj, k_proj, v_proj
            for name, piece in zip(fused[template], v.split(_fused_sizes(template, model)), strict=True):
                out[name.replace("{i}", layer or "")] = piece.contiguous()
            continue
        out[to_hf_key(k, model_type)] = (v.t() if model_type in CONV1D_TYPES and is_conv1d(k) else v).contiguous()
    if isinstance(model, GPTModel):  # a bare backbone is saved without the prefix, like transformers' GPT2Model
        strip = "model." if model_type == "qwen2" else "transformer."
        out = {k.removeprefix(strip): v for k, v in out.items()}
    return out


def _convert(state: dict[str, Tensor], source: dict[str, str], model_type: str | None,
             ) -> tuple[dict[str, Tensor], dict[str, tuple[str, str]]]:
    """Rename (and transpose) checkpoint tensors to omnigpt keys, remembering each one's file and original key;
    two spellings of one key are an error; the parts of a fused tensor are stacked in order. ``model_type`` None:
    omnigpt's own state-dict layout."""
    out: dict[str, Tensor] = {}
    where: dict[str, tuple[str, str]] = {}
    fused = FUSED.get(model_type or "", {})
    parts: dict[str, dict[int, Tensor]] = {}
    for key, t in state.items():
        k = prefixed(key) if model_type is None else from_hf_key(key, model_type)
        if k is None:
            continue
        template = _template(k)[0]
        if template in fused:  # one of q_proj, k_proj, v_proj (gate_proj, up_proj): stacked below
            parts.setdefault(k, {})[fused[template].index(_template(_qwen2_prefixed(key))[0])] = t
            where.setdefault(k, (source[key], key))
            continue
        if k in out:
            raise CheckpointError(f"{source[key]}: key {key!r} duplicates another spelling of {k!r}")
        out[k] = t.t() if (model_type in CONV1D_TYPES and is_conv1d(k) and t.dim() == 2) else t
        where[k] = (source[key], key)
    for k, pieces in parts.items():
        template, layer = _template(k)
        names = [n.replace("{i}", layer or "") for n in fused[template]]
        if missing := [n for i, n in enumerate(names) if i not in pieces]:
            raise CheckpointError(f"{where[k][0]}: key {missing[0]!r} is missing (stacked with {names} into {k!r})")
        shapes = [tuple(pieces[i].shape) for i in range(len(names))]
        if any(len(s) != len(shapes[0]) or s[1:] != shapes[0][1:] for s in shapes):
            raise CheckpointError(f"{where[k][0]}: keys {names} have shapes {shapes}, which do not stack")
        out[k] = torch.cat([pieces[i] for i in range(len(names))])
    return out, where


def _pick_head(cfg_dict: dict[str, Any], state: dict[str, Tensor]) -> Head:
    archs = cfg_dict.get("architectures") or []
    if "score.weight" in state or any("SequenceClassification" in str(a) for a in archs):
        return "cls"
    return "lm"


def load_gpt(directory: str | Path, map_location: str | torch.device = "cpu",
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
    conv1d = not native and cfg_dict["model_type"] in CONV1D_TYPES
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
            conv = " (Conv1D, stored (in, out))" if is_conv1d(k) and conv1d else ""
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


__all__ = ["hf_state_dict", "load_gpt", "read_weights", "write_pretrained"]
