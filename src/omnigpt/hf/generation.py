"""``model.generate(...)`` as ``transformers`` has it, on top of ``omnigpt.generate.decode.generate``.

``GenerationMixin.generate(input_ids, attention_mask, max_new_tokens=..., do_sample=..., temperature=...,
top_k=..., top_p=..., repetition_penalty=..., eos_token_id=..., pad_token_id=...)`` returns what transformers
returns: a (B, P + N) LongTensor, the prompt as given (padding included) followed by the new tokens, each row padded
with ``pad_token_id`` after its EOS. Decoding itself is omnigpt's one KV-cache loop (``generate.decode``): this
module only translates arguments and assembles the rows.

Settings merge as in transformers: its global defaults (20 new tokens, greedy, ``top_k`` 50 when sampling,
``top_p`` 1) ← the model's ``generation_config`` (``generation_config.json`` beside the weights, else the
config's bos/eos/pad ids) ← a ``generation_config`` argument ← keyword arguments. Without ``attention_mask`` the
mask is inferred as transformers does (pad tokens masked when the pad id is set and is not an EOS id); without
``pad_token_id`` the first EOS id pads. ``max_new_tokens`` wins over ``max_length`` (which counts the prompt);
with neither set, 20 new tokens (fewer where the context ends), as transformers 5 does. ``do_sample=False``
ignores temperature/top-k/top-p, as transformers does.

Deviations: beam search, constraints, logits processors, streamers, ``min_new_tokens`` and the other options
omnigpt does not implement raise ``ValueError`` naming them (never silently ignored); neutral values (e.g.
``num_beams=1``) are accepted. Prompts longer than the model's context raise ``ContextOverflowError``.
Sampling uses the global torch RNG, as in transformers (``torch.manual_seed`` makes it reproducible), or a private
generator with omnigpt's extra ``seed=``; with the same seed the draws equal transformers' until a row of the batch
finishes (omnigpt then drops finished rows, so later draws differ). The repetition penalty counts only real prompt
tokens, not left pads.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from omnigpt.config import GPTConfig
from omnigpt.generate.decode import generate as decode_generate


@dataclass
class GenerationConfig:
    """transformers' ``GenerationConfig`` fields that omnigpt implements, with transformers' global defaults.

    Not frozen, unlike omnigpt's model configs: transformers users set fields on ``model.generation_config``.
    ``unsupported`` holds settings read from ``generation_config.json`` that omnigpt cannot honour; ``generate``
    raises on them unless the call overrides them with a neutral value."""

    max_length: int | None = None  # prompt included; None: 20 new tokens (transformers 5's model-agnostic default)
    max_new_tokens: int | None = None
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    num_return_sequences: int = 1
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    unsupported: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_model_config(cls, config: GPTConfig) -> GenerationConfig:
        """bos/eos from the checkpoint's metadata (``config.extra``), pad from ``pad_token_id``."""
        return cls(bos_token_id=config.extra.get("bos_token_id"), eos_token_id=config.extra.get("eos_token_id"),
                   pad_token_id=config.pad_token_id)

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: GenerationConfig | None = None) -> GenerationConfig:
        """``base`` updated with ``d`` (a ``generation_config.json`` or keyword arguments)."""
        known = {f.name for f in dataclasses.fields(cls)} - {"unsupported"}
        out = dataclasses.replace(base or cls(), unsupported=dict((base or cls()).unsupported))
        for key, value in d.items():
            if key in known:
                setattr(out, key, value)
                out.unsupported.pop(key, None)
            elif key in NEUTRAL:
                if value is None or value == NEUTRAL[key] or key in _NO_EFFECT:
                    out.unsupported.pop(key, None)
                else:
                    out.unsupported[key] = value
            # other keys of generation_config.json (transformers_version, _from_model_config, ...) are metadata
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path, config: GPTConfig) -> GenerationConfig:
        """``generation_config.json`` in ``directory`` over the model config's ids (transformers' order)."""
        base = cls.from_model_config(config)
        path = Path(directory) / "generation_config.json"
        if not path.is_file():
            return base
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: must hold a JSON object")
        return cls.from_dict(d, base)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {**{k: v for k, v in d.items() if k != "unsupported"}, **self.unsupported}


# Options transformers has and omnigpt does not implement, each with the value that makes it a no-op. A call (or a
# generation_config.json) with another value raises instead of giving a different result than transformers would.
NEUTRAL: dict[str, Any] = {
    "num_beams": 1, "num_beam_groups": 1, "penalty_alpha": None, "min_length": 0, "min_new_tokens": 0,
    "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "min_p": None, "top_h": None,
    "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "force_words_ids": None,
    "sequence_bias": None, "suppress_tokens": None, "begin_suppress_tokens": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "exponential_decay_length_penalty": None, "diversity_penalty": 0.0,
    "encoder_repetition_penalty": 1.0, "guidance_scale": None, "low_memory": None, "remove_invalid_values": False,
    "renormalize_logits": False, "max_time": None, "stop_strings": None, "watermarking_config": None,
    "output_scores": False, "output_logits": False, "output_attentions": False, "output_hidden_states": False,
    "return_dict_in_generate": False, "logits_processor": None, "stopping_criteria": None, "streamer": None,
    "assistant_model": None, "prompt_lookup_num_tokens": None, "constraints": None, "prefix_allowed_tokens_fn": None,
    "synced_gpus": None, "negative_prompt_ids": None, "token_healing": False, "dola_layers": None,
    "decoder_start_token_id": None, "cache_implementation": None, "past_key_values": None,
    # No effect on greedy decoding or sampling (beam search only) or on the tokens (cache / speed settings):
    "length_penalty": 1.0, "early_stopping": False, "use_cache": True, "num_assistant_tokens": 20,
    "num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": 0.4, "compile_config": None,
    "disable_compile": False, "is_assistant": False,
}
_NO_EFFECT = {"length_penalty", "early_stopping", "use_cache", "num_assistant_tokens", "num_assistant_tokens_schedule",
              "assistant_confidence_threshold", "compile_config", "disable_compile", "is_assistant"}


def _as_list(ids: int | list[int] | Tensor | None) -> list[int]:
    if ids is None:
        return []
    if isinstance(ids, Tensor):
        ids = ids.tolist()
    return [int(ids)] if isinstance(ids, int) else [int(i) for i in ids]


class GenerationMixin:
    """``generate`` and ``generation_config`` for the facade causal-LM classes (``GPT2LMHeadModel``,
    ``LlamaForCausalLM``); the class must also be an omnigpt ``GPT``."""

    config: GPTConfig

    @property
    def generation_config(self) -> GenerationConfig:
        """The model's generation defaults: loaded with the weights, else derived from the config."""
        found = self.__dict__.get("_generation_config")
        if found is None:
            found = GenerationConfig.from_model_config(self.config)
            self.__dict__["_generation_config"] = found
        return found

    @generation_config.setter
    def generation_config(self, value: GenerationConfig) -> None:
        self.__dict__["_generation_config"] = value

    def generate(self, inputs: Tensor | None = None, generation_config: GenerationConfig | dict[str, Any] | None = None,
                 *, input_ids: Tensor | None = None, attention_mask: Tensor | None = None, seed: int | None = None,
                 **kwargs: Any) -> Tensor:
        """Prompt + new tokens (B, P + N); see the module docstring for the options and their defaults."""
        if inputs is not None and input_ids is not None:
            raise ValueError("pass the prompt once: inputs or input_ids")
        ids = inputs if inputs is not None else input_ids
        if ids is None:
            raise ValueError("generate needs input_ids (a (B, T) LongTensor); inputs_embeds is not supported")
        if not isinstance(ids, Tensor):
            ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dim() == 1:
            ids = ids[None]
        if ids.dim() != 2 or ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"input_ids must be an integer tensor of shape (B, T), got {ids.dtype} {tuple(ids.shape)}")
        known = {f.name for f in dataclasses.fields(GenerationConfig)} - {"unsupported"}
        unknown = sorted(set(kwargs) - known - set(NEUTRAL))
        if unknown:
            raise TypeError(f"generate() got unsupported options {unknown} (omnigpt supports "
                            f"{sorted(known)}, seed)")
        gc = self.generation_config
        if generation_config is not None:
            extra = generation_config if isinstance(generation_config, dict) else generation_config.to_dict()
            gc = GenerationConfig.from_dict(extra, gc)
        gc = GenerationConfig.from_dict(kwargs, gc)
        if gc.unsupported:
            raise ValueError(f"generate: {gc.unsupported} are not supported by omnigpt (only greedy decoding and "
                             f"sampling with temperature, top_k, top_p, repetition_penalty)")
        return self._generate(ids, attention_mask, gc, seed)

    def _generate(self, ids: Tensor, attention_mask: Tensor | None, gc: GenerationConfig, seed: int | None) -> Tensor:
        B, P = ids.shape
        eos = _as_list(gc.eos_token_id)
        pad = gc.pad_token_id if gc.pad_token_id is not None else (eos[0] if eos else None)
        if attention_mask is None:  # transformers: mask the pad tokens when they can be told apart from EOS
            if pad is not None and pad not in eos and bool((ids == pad).any()):
                attention_mask = (ids != pad).long()
        elif tuple(attention_mask.shape) != (B, P):
            raise ValueError(f"attention_mask must have input_ids' shape {(B, P)}, got {tuple(attention_mask.shape)}")
        if gc.max_new_tokens is not None:
            max_new = gc.max_new_tokens
        elif gc.max_length is not None:
            max_new = gc.max_length - P
            if max_new <= 0:
                raise ValueError(f"the prompt ({P} tokens) already reaches max_length={gc.max_length}: pass "
                                 f"max_new_tokens")
        else:
            max_new = max(1, min(20, self.config.block_size - P))  # too long a prompt: the decoder says so
        if gc.do_sample:
            if gc.temperature is None or gc.temperature <= 0:
                raise ValueError(f"do_sample=True needs temperature > 0, got {gc.temperature}")
            controls = dict(temperature=float(gc.temperature), top_k=gc.top_k or None,
                            top_p=None if gc.top_p is None or gc.top_p >= 1.0 else float(gc.top_p))
        else:
            controls = dict(temperature=0.0)
        n = gc.num_return_sequences or 1
        if n > 1:
            if not gc.do_sample:
                raise ValueError("num_return_sequences > 1 needs do_sample=True (greedy gives one answer)")
            ids = ids.repeat_interleave(n, dim=0)
            attention_mask = None if attention_mask is None else attention_mask.repeat_interleave(n, dim=0)
        rows: list[list[int]] = [[] for _ in range(ids.shape[0])]
        steps = decode_generate(self, ids, attention_mask=attention_mask, max_new_tokens=max_new,  # type: ignore[arg-type]
                                repetition_penalty=float(gc.repetition_penalty or 1.0), stop_token_ids=eos,
                                seed=seed, **controls)
        with steps:
            for step in steps:
                for i, t in enumerate(step.tokens):
                    if t is not None:
                        rows[i].append(t)
        width = max(map(len, rows))
        out = torch.full((ids.shape[0], P + width), pad if pad is not None else 0, dtype=torch.long)
        out[:, :P] = ids.cpu()
        for i, r in enumerate(rows):
            out[i, P:P + len(r)] = torch.tensor(r, dtype=torch.long)
        return out.to(ids.device)


__all__ = ["NEUTRAL", "GenerationConfig", "GenerationMixin"]
