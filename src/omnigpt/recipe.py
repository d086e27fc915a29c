"""Training recipes: a YAML file (plus ``--key=value`` overrides) checked into a typed ``TrainRecipe``.

Every mistake a recipe can hold is reported here, before a model is built or a token is read: an unknown key
names the valid ones (typos such as ``learning_rate`` for ``lr`` would otherwise silently do nothing), a value of
the wrong type names the expected type, impossible combinations (a batch that does not split into micro-batches)
are explained. Recipes hold data, model preset + overrides and schedule — never architecture code.

Overrides use dotted paths and YAML values: ``--max_steps=100 --model.n_layer=6 --data.sources=[a.txt,b.txt]``.
Reference: nanoGPT's ``configurator.py`` (flat overrides), litgpt's config validation, torchtitan's job config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from omnigpt.config import GPTConfig
from omnigpt.data.shards import DataSpec


@dataclass
class TrainRecipe:
    """One training run. Batch sizes count sequences of ``block_size`` tokens."""

    out_dir: str = "runs/default"  # metrics.jsonl, loss.png, checkpoints/step_NNNNNN/
    data: DataSpec = field(default_factory=DataSpec)
    # {"preset": name, **GPTConfig overrides}; vocab_size defaults to the tokenizer's vocabulary.
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "gpt2"})
    seed: int = 1337
    threads: int | None = None  # torch.set_num_threads; fix it for bit-reproducible CPU runs (FACTS.md)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: Literal["bfloat16", "float32"] = "bfloat16"  # autocast compute dtype; master weights stay fp32
    compile: bool = False  # torch.compile the model
    parallelism: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate (DDP) or shard (FSDP2)
    # batch and schedule
    batch_size: int = 12  # global sequences per optimizer step (all ranks, all micro-steps)
    micro_batch: int = 12  # sequences per forward pass per process; accumulation = batch / (micro × world)
    max_steps: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    decay_steps: int | None = None  # cosine from lr to min_lr over this many steps (default: max_steps)
    weight_decay: float = 0.1  # matrices only; biases, LayerNorms and position tables are not decayed
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    # bookkeeping
    log_interval: int = 10
    eval_interval: int = 250
    eval_tokens: int | None = 65536  # periodic validation on the first N val tokens (null: the full split)
    final_eval: bool = True  # a full pass over val at the end
    checkpoint_interval: int = 500
    keep_checkpoints: int = 2
    max_nonfinite: int = 5  # this many non-finite losses in a row stop the run
    max_minutes: float | None = None  # wall-clock budget: past it the run checkpoints and ends early (demos)
    progress: bool = True  # tqdm bar (rank 0)

    @property
    def accumulation(self) -> int:  # for one process; the trainer divides by the world size
        return self.batch_size // self.micro_batch


class RecipeError(ValueError):
    """A recipe that cannot run: the message names the key and what is wrong with it."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` (int → float is allowed, nothing else is converted)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except RecipeError as e:
                errors.append(str(e))
        raise RecipeError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"{where}: must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, bool):
        raise RecipeError(f"{where}: expected int, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise RecipeError(f"{where}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise RecipeError(f"{where}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise RecipeError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(names)}")
    kwargs = {}
    for k, v in raw.items():
        tp = hints[k]
        if dataclasses.is_dataclass(tp):
            kwargs[k] = _build(tp, v, f"{where}.{k}" if where != "recipe" else k)
        else:
            kwargs[k] = _coerce(v, tp, f"{k}" if where == "recipe" else f"{where}.{k}")
    return cls(**kwargs)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["--a.b=1", "c=x"]`` → ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.removeprefix("--").partition("=")
        if not sep or not key:
            raise RecipeError(f"override {item!r}: expected --key=value (dotted keys for sections: --model.n_layer=4)")
        node = out
        *parents, last = key.replace("-", "_").split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = yaml.safe_load(value) if value != "" else None
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def model_config(model: dict[str, Any], vocab_size: int | None = None) -> GPTConfig:
    """GPTConfig from a recipe's ``model`` mapping: ``preset`` plus GPTConfig field overrides."""
    spec = dict(model)
    preset = spec.pop("preset", None)
    if not isinstance(preset, str):
        raise RecipeError("model.preset: required, a preset name such as gpt2 or tiny-gpt2")
    valid = [f.name for f in dataclasses.fields(GPTConfig) if f.name not in ("name", "extra")]
    unknown = [k for k in spec if k not in valid]
    if unknown:
        raise RecipeError(f"model: unknown key {unknown[0]!r}; valid keys: preset, {', '.join(valid)}")
    hints = typing.get_type_hints(GPTConfig)
    spec = {k: _coerce(v, hints[k], f"model.{k}") for k, v in spec.items()}
    if vocab_size is not None and "vocab_size" not in spec:
        spec["vocab_size"] = vocab_size
    try:
        return GPTConfig.from_name(preset, **spec)
    except ValueError as e:
        raise RecipeError(f"model: {e}") from None


def validate(r: TrainRecipe, world_size: int = 1) -> None:
    """Cross-field checks (types were checked while building)."""
    positive = ["batch_size", "micro_batch", "max_steps", "log_interval", "eval_interval", "checkpoint_interval",
                "keep_checkpoints", "max_nonfinite"]
    for k in positive:
        if getattr(r, k) <= 0:
            raise RecipeError(f"{k}: must be positive, got {getattr(r, k)}")
    for k in ("warmup_steps", "lr", "min_lr", "weight_decay", "grad_clip"):
        if getattr(r, k) < 0:
            raise RecipeError(f"{k}: must be >= 0, got {getattr(r, k)}")
    if r.min_lr > r.lr:
        raise RecipeError(f"min_lr ({r.min_lr}) must not exceed lr ({r.lr})")
    if r.threads is not None and r.threads <= 0:
        raise RecipeError(f"threads: must be positive, got {r.threads}")
    per_step = r.micro_batch * world_size
    if r.batch_size % per_step:
        raise RecipeError(f"batch_size {r.batch_size} must be a multiple of micro_batch × processes = "
                          f"{r.micro_batch} × {world_size}")
    if not 0.0 < r.data.val_fraction < 1.0:
        raise RecipeError(f"data.val_fraction: must be in (0, 1), got {r.data.val_fraction}")
    model_config(r.model)  # preset and overrides valid


def load_recipe(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
                world_size: int = 1) -> TrainRecipe:
    """Read, override, type-check and validate a recipe. Raises ``RecipeError`` (a ValueError) on any problem."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"recipe {path} not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise RecipeError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(raw, dict):
            raise RecipeError(f"{path}: expected a mapping of keys at the top level")
    extra = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
    recipe = _build(TrainRecipe, _merge(raw, extra), "recipe")
    validate(recipe, world_size)
    return recipe


def recipe_to_dict(r: TrainRecipe) -> dict[str, Any]:
    return dataclasses.asdict(r)
