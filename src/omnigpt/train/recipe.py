"""Training recipes: one YAML schema for every task, checked into a typed ``Recipe`` before anything loads.

Every mistake a recipe can hold is reported here, before a model is built or a token is read: an unknown key
names the valid ones (``learning_rate`` for ``lr`` would otherwise silently do nothing), a value of the wrong type
names the expected type, impossible combinations (a batch that does not split into micro-batches, a stage that
trains a module the model lacks) are explained. Recipes hold data, model presets + overrides and the schedule —
never architecture code.

One schema: ``task`` picks what is trained (``lm``, ``multimodal``, ``contrastive``, ...: ``apps/<app>/task.py``), and
with it the shape of the ``data`` and ``model`` sections; everything else — batch, optimizer, ``stages``, bookkeeping —
has the same names and defaults for every task. An LM run is a recipe with one stage (the default). Overrides use
dotted paths and YAML values: ``--max_steps=100 --model.n_layer=6 --data.sources=[a.txt,b.txt]``.
References: nanoGPT's ``configurator.py`` (flat overrides), litgpt's config validation, torchtitan's job config.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from omnigpt.config import GPTConfig
from omnigpt.models.lora import LoRAConfig
from omnigpt.train.schedule import Stage


class RecipeError(ValueError):
    """A recipe that cannot run: the message names the key and what is wrong with it."""


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp`` (int → float is allowed, nothing else is converted)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 and (dataclasses.is_dataclass(options[0]) or typing.get_origin(options[0])):
            return _coerce(value, options[0], where)  # an optional section: its own error names the inner key
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
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin in (list, tuple):  # list[X] and tuple[X, ...]; YAML only has lists
        if not isinstance(value, list | tuple):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        items = [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        if args and args[1] is not Any:
            return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
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
    kwargs = {k: _coerce(v, hints[k], k if where == "recipe" else f"{where}.{k}") for k, v in raw.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:  # a missing required key, or the dataclass's own checks (Stage)
        raise RecipeError(f"{where}: {e}") from None


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
        node[last] = _scalar(value)
    return out


def _scalar(value: str) -> Any:
    """A YAML scalar, except that ``2e-3`` is a float (YAML 1.1 reads exponents without a dot as strings)."""
    if value == "":
        return None
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):
        try:
            return float(parsed)
        except ValueError:
            pass
    return parsed


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


# ------------------------------------------------------------------------------------------------------------
# Multimodal and contrastive sections


@dataclass
class MMSource:
    """One prepared multimodal directory (the output of ``omnigpt prepare-mm``) in a recipe's data mix."""

    dir: str
    split: str = "train"  # reads {split}.llava.json (contrastive: {split}.jsonl)
    weight: float = 1.0  # share of training rows drawn from this source (weights are normalised over sources)
    limit: int | None = None  # the first N items only
    # Items whose id hashes below ``holdout`` (data.multimodal.held_out) are kept for evaluation: a training
    # source skips them, an evaluation source reads only them — held-out voices of a synthetic speech set.
    holdout: float = 0.0
    name: str | None = None  # prefix of this source's metrics (default: the directory's name)

    @property
    def label(self) -> str:
        return self.name or Path(self.dir).name


@dataclass
class MMDataSpec:
    """``train``: the training mix; ``eval``: what ``omnigpt eval`` scores by default (and the end of training)."""

    train: list[MMSource] = field(default_factory=list)
    eval: list[MMSource] = field(default_factory=list)
    tokenizer: Literal["char", "gpt2"] = "char"  # "char": printable ASCII + the training text's characters
    spec_augment: bool = False  # SpecAugment on training log-mels (data.multimodal.spec_augment)
    max_new_tokens: int = 24  # generation budget when scoring answers


@dataclass
class MMModelSpec:
    """Which decoder, encoders and projectors: presets by name (``config.py``, ``models/``), never architecture."""

    text: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny-gpt2"})  # preset + GPTConfig overrides
    vision: str | None = None  # VisionConfig preset (vit-fmnist, vit-emoji, tiny-vit, ...)
    audio: str | None = None  # AudioConfig preset (audio-small, tiny-audio, ...)
    projector: Literal["linear", "mlp"] = "mlp"
    vision_merge: int = 1  # encoder vectors concatenated per decoder token
    audio_merge: int = 2
    audio_seconds: float = 2.0  # clip window; longer clips are cut (truncate_audio) or refused
    truncate_audio: bool = True
    embed_dim: int = 128  # contrastive: the shared embedding width
    # > 0: an auxiliary CTC loss on the audio encoder (apps.multimodal.task.AudioCTC, module ctc_head; not saved)
    ctc_weight: float = 0.0


def multimodal_config(spec: MMModelSpec, vocab_size: int | None = None, image_token_id: int | None = None,
                      audio_token_id: int | None = None) -> Any:
    """The ``MultimodalConfig`` a recipe's model section describes."""
    from omnigpt.models.audio import AudioConfig
    from omnigpt.models.multimodal import MultimodalConfig, ProjectorConfig
    from omnigpt.models.vision import VisionConfig

    try:
        return MultimodalConfig(
            name="recipe", text=model_config(spec.text, vocab_size),
            vision=VisionConfig.from_name(spec.vision) if spec.vision else None,
            audio=AudioConfig.from_name(spec.audio) if spec.audio else None,
            vision_projector=ProjectorConfig(spec.projector, spec.vision_merge),
            audio_projector=ProjectorConfig(spec.projector, spec.audio_merge),
            image_token_id=image_token_id, audio_token_id=audio_token_id, audio_frames=round(spec.audio_seconds * 100))
    except ValueError as e:
        raise RecipeError(f"model: {e}") from None


def contrastive_config(spec: MMModelSpec, vocab_size: int | None = None) -> Any:
    """The ``ContrastiveConfig`` (image–text) a recipe's model section describes."""
    from omnigpt.models.contrastive import ContrastiveConfig
    from omnigpt.models.vision import VisionConfig

    if not spec.vision or spec.audio:
        raise RecipeError("model: contrastive recipes align images with text: set model.vision, not model.audio")
    try:
        return ContrastiveConfig(name="recipe", embed_dim=spec.embed_dim, vision=VisionConfig.from_name(spec.vision),
                                 text=model_config(spec.text, vocab_size))
    except ValueError as e:
        raise RecipeError(f"model: {e}") from None


@dataclass
class SFTDataSpec:
    """Instruction fine-tuning data (``apps/sft/task.py``): conversations of user/assistant turns."""

    # "wikipedia-qa": the built-in set (Wikipedia lead sections → "Describe X in one line." → its one-line
    # description); or a JSON Lines file, one {"id": str, "messages": [{"role", "content"}, ...]} per line
    source: str = "wikipedia-qa"
    limit: int | None = None  # the first N conversations of the source (before the split)
    val_fraction: float = 0.05  # held out by a hash of each conversation's id (never by the run's seed)
    max_len: int = 256  # tokens per conversation after the chat template; longer ones are cut at the end
    system: str | None = None  # a system message for every conversation (None: the template's default)
    max_new_tokens: int = 32  # final evaluation: greedy answers to held-out prompts
    generate: int = 64  # held-out prompts answered at the end (exact match, 0: none)


@dataclass
class SFTModelSpec:
    """The pretrained model to fine-tune and, optionally, LoRA adapters (without ``lora``: full fine-tuning)."""

    pretrained: str = "smollm2-135m-instruct"  # an offline name or a model directory (checkpoints.registry)
    lora: LoRAConfig | None = None  # {rank, alpha, dropout, targets}: base weights frozen, adapters trained


@dataclass
class Recipe:
    """One training run of any task. Batch sizes count sequences (lm: windows of block_size tokens; multimodal:
    conversations; contrastive: pairs)."""

    task: str = "lm"  # a name in apps.TASKS (lm, multimodal, contrastive, sft, classify, seq2seq, ...)
    out_dir: str = "runs/default"  # metrics.jsonl, loss.png, recipe.json, checkpoints/step_NNNNNN/
    data: Any = None  # the task's data section, of its type ``Task.data_spec``
    model: Any = None  # the task's model section, of its type ``Task.model_spec``
    seed: int = 1337
    threads: int | None = None  # torch.set_num_threads; fix it for bit-reproducible CPU runs
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # autocast compute dtype (master weights stay fp32): auto = bf16 where the device computes it natively (CUDA,
    # AVX512_BF16, AMX), fp32 elsewhere (kernels/precision.py); the resolved dtype and why go into recipe.json
    dtype: Literal["auto", "bfloat16", "float32"] = "auto"
    compile: bool = False  # torch.compile the module that computes the loss
    # bf16 on CPU: "auto" measures each GEMM shape's fastest blocking once (kernels/matmul.py) and keeps the plan
    # in out_dir for exact resumes; "off"; or the path of a plan file to pin (bit-identical separate runs)
    matmul_plan: str | bool = "auto"  # YAML reads a bare off/on as false/true: those mean "off"/"auto"
    parallelism: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate (DDP) or shard (FSDP2)
    # batch
    batch_size: int = 12  # global sequences per optimizer step (all ranks, all micro-steps)
    micro_batch: int | None = None  # per forward pass per process (default: batch_size / processes)
    # schedule: stages run in order; a stage's unset lr / warmup / min_lr_ratio / weight_decay take these
    max_steps: int | None = None  # default: the sum of the stages' steps
    stages: list[Stage] = field(default_factory=lambda: [Stage("full")])
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine floor: min lr = min_lr_ratio × lr
    warmup: int = 100
    weight_decay: float = 0.1  # matrices only; biases, norms and scalars are not decayed
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    # bookkeeping
    log_interval: int = 10
    eval_interval: int = 250
    eval_limit: int | None = 65536  # periodic validation on the first N val tokens (lm) or items (null: all)
    final_eval: bool = True  # a full evaluation at the end (lm: full pass over val; multimodal: task metrics)
    checkpoint_interval: int = 500
    keep_checkpoints: int = 2
    max_nonfinite: int = 5  # this many non-finite losses in a row stop the run
    # a guard, not a schedule: past this the run checkpoints and stops, and says so (steps done / planned) in the
    # console, run.json and the evaluation; the schedule is always a function of the step, so results reproduce
    max_minutes: float | None = None
    progress: bool = True  # progress bar on a terminal, a line per log interval otherwise (rank 0)

    def micro(self, world_size: int) -> int:
        return self.micro_batch or self.batch_size // world_size

    def accumulation(self, world_size: int) -> int:
        return self.batch_size // (self.micro(world_size) * world_size)


def validate(r: Recipe, world_size: int = 1) -> None:
    """Cross-field checks (types were checked while building); resolves the stages' unset fields in place."""
    positive = ["batch_size", "log_interval", "eval_interval", "checkpoint_interval", "keep_checkpoints",
                "max_nonfinite"]
    for k in positive:
        if getattr(r, k) <= 0:
            raise RecipeError(f"{k}: must be positive, got {getattr(r, k)}")
    for k in ("warmup", "lr", "weight_decay", "grad_clip", "eps"):
        if getattr(r, k) < 0:
            raise RecipeError(f"{k}: must be >= 0, got {getattr(r, k)}")
    if not 0.0 <= r.min_lr_ratio <= 1.0:
        raise RecipeError(f"min_lr_ratio: must be in [0, 1], got {r.min_lr_ratio}")
    for k in ("threads", "micro_batch", "max_steps", "eval_limit"):
        if getattr(r, k) is not None and getattr(r, k) <= 0:
            raise RecipeError(f"{k}: must be positive, got {getattr(r, k)}")
    if isinstance(r.matmul_plan, bool):
        r.matmul_plan = "auto" if r.matmul_plan else "off"
    if r.matmul_plan not in ("auto", "off") and not Path(r.matmul_plan).is_file():
        raise RecipeError(f"matmul_plan: expected auto, off or an existing plan file, got {r.matmul_plan!r}")
    micro = r.micro(world_size)
    if micro <= 0 or r.batch_size % (micro * world_size):
        raise RecipeError(f"batch_size {r.batch_size} must be a multiple of micro_batch × processes = "
                          f"{micro} × {world_size}")
    r.stages = resolve_stages(r)


def resolve_stages(r: Recipe) -> list[Stage]:
    """The stages with every unset field filled from the recipe and ``steps`` summing to ``max_steps``."""
    if not r.stages:
        raise RecipeError("stages: list at least one stage ({name: full, steps: 1000, lr: 1e-3})")
    fixed = [s.steps for s in r.stages if s.steps is not None]
    if any(n <= 0 for n in fixed):
        raise RecipeError("stages: steps must be positive")
    open_ = [i for i, s in enumerate(r.stages) if s.steps is None]
    if open_ and open_ != [len(r.stages) - 1]:
        raise RecipeError("stages: only the last stage may leave steps unset (it takes the rest of max_steps)")
    total = r.max_steps if r.max_steps is not None else (sum(fixed) if not open_ else None)
    if total is None:
        raise RecipeError("max_steps: required when the last stage leaves its steps unset")
    if open_ and total - sum(fixed) <= 0:
        raise RecipeError(f"max_steps {total} leaves no steps for stage {r.stages[-1].name!r} after "
                          f"{sum(fixed)} in the stages before it")
    if not open_ and sum(fixed) != total:
        raise RecipeError(f"max_steps {total} differs from the stages' steps, which sum to {sum(fixed)}: "
                          f"change the stages' steps (--stages=...) or drop max_steps")
    out = []
    for s in r.stages:
        s = dataclasses.replace(
            s, steps=s.steps if s.steps is not None else total - sum(fixed),
            lr=r.lr if s.lr is None else s.lr, warmup=r.warmup if s.warmup is None else s.warmup,
            min_lr_ratio=r.min_lr_ratio if s.min_lr_ratio is None else s.min_lr_ratio,
            weight_decay=r.weight_decay if s.weight_decay is None else s.weight_decay,
            train=tuple(s.train) if s.train is not None else None)
        if s.lr < 0 or s.warmup < 0 or not 0 <= s.min_lr_ratio <= 1 or s.weight_decay < 0:
            raise RecipeError(f"stage {s.name!r}: lr, warmup, weight_decay must be >= 0, min_lr_ratio in [0, 1]")
        out.append(s)
    r.max_steps = total
    return out


def read_recipe(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
                ) -> dict[str, Any]:
    """The YAML mapping at ``path`` with ``overrides`` merged in, not yet type-checked."""
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
    return _merge(raw, extra)


def parse_recipe(sections: Callable[[str], tuple[type, Any]], path: str | Path | None = None,
                 overrides: list[str] | dict[str, Any] | None = None, world_size: int = 1) -> Recipe:
    """Read, override, type-check and validate a recipe of any task. ``sections(task)`` gives the task's data and
    model section types (``Task.data_spec``, ``Task.model_spec``; ``apps.load_recipe`` passes them). Raises
    ``RecipeError`` (a ValueError); the task's own checks follow in ``apps.load_recipe``."""
    raw = dict(read_recipe(path, overrides))
    task = raw.get("task", "lm")
    try:
        data_type, model_type = sections(task)
    except ValueError as e:
        raise RecipeError(f"task: {e}") from None
    data, model = raw.pop("data", {}), raw.pop("model", None)
    recipe = _build(Recipe, raw, "recipe")
    recipe.data = _coerce(data if data is not None else {}, data_type, "data")
    default_model = {"preset": "gpt2"} if task == "lm" else {}
    recipe.model = _coerce(model if model is not None else default_model, model_type, "model")
    validate(recipe, world_size)
    return recipe


def recipe_to_dict(r: Recipe) -> dict[str, Any]:
    return dataclasses.asdict(r)
