"""Training recipes: a YAML file (plus ``--key=value`` overrides) checked into a typed ``TrainRecipe``.

Every mistake a recipe can hold is reported here, before a model is built or a token is read: an unknown key
names the valid ones (typos such as ``learning_rate`` for ``lr`` would otherwise silently do nothing), a value of
the wrong type names the expected type, impossible combinations (a batch that does not split into micro-batches)
are explained. Recipes hold data, model preset + overrides and schedule — never architecture code.

Overrides use dotted paths and YAML values: ``--max_steps=100 --model.n_layer=6 --data.sources=[a.txt,b.txt]``.

``task`` picks the recipe type: ``lm`` (default) is a ``TrainRecipe`` for the text trainer (``train.py``);
``multimodal`` (``MultimodalGPT`` on LLaVA-style conversations) and ``contrastive`` (CLIP on caption JSONL) are a
``MultimodalRecipe`` for ``mm_pipeline.py``: prepared data directories mixed by weight, a decoder preset plus
encoder presets, and ``stages`` — ``train_mm.Stage`` rows (modules trained, peak lr, per-module lr multipliers).
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
from omnigpt.train.multimodal_lib import Stage

TASKS = ("lm", "multimodal", "contrastive")


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
    # bf16 on CPU: "auto" measures each GEMM shape's fastest blocking once (omnigpt.kernels.matmul) and keeps the plan in
    # out_dir for exact resumes; "off"; or the path of a plan file to pin (bit-identical separate runs)
    matmul_plan: str | bool = "auto"  # YAML reads a bare off/on as false/true: those mean "off"/"auto"
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
    task: Literal["lm"] = "lm"  # multimodal / contrastive recipes are a MultimodalRecipe

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
    if isinstance(r.matmul_plan, bool):
        r.matmul_plan = "auto" if r.matmul_plan else "off"
    if r.matmul_plan not in ("auto", "off") and not Path(r.matmul_plan).is_file():
        raise RecipeError(f"matmul_plan: expected auto, off or an existing plan file, got {r.matmul_plan!r}")
    per_step = r.micro_batch * world_size
    if r.batch_size % per_step:
        raise RecipeError(f"batch_size {r.batch_size} must be a multiple of micro_batch × processes = "
                          f"{r.micro_batch} × {world_size}")
    if not 0.0 < r.data.val_fraction < 1.0:
        raise RecipeError(f"data.val_fraction: must be in (0, 1), got {r.data.val_fraction}")
    model_config(r.model)  # preset and overrides valid


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
    merged = _merge(raw, extra)
    if merged.get("task", "lm") not in TASKS:
        raise RecipeError(f"task: must be one of {list(TASKS)}, got {merged['task']!r}")
    return merged


def load_recipe(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
                world_size: int = 1) -> TrainRecipe:
    """Read, override, type-check and validate a text recipe. Raises ``RecipeError`` (a ValueError) on any
    problem."""
    raw = read_recipe(path, overrides)
    if raw.get("task", "lm") != "lm":
        raise RecipeError(f"task {raw['task']!r}: a multimodal recipe, not a text one (`omnigpt train` runs both)")
    recipe = _build(TrainRecipe, raw, "recipe")
    validate(recipe, world_size)
    return recipe


def load_any_recipe(path: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None,
                    world_size: int = 1) -> TrainRecipe | MultimodalRecipe:
    """A ``TrainRecipe`` or a ``MultimodalRecipe``, by the recipe's ``task`` (what ``omnigpt train`` runs)."""
    raw = read_recipe(path, overrides)
    if raw.get("task", "lm") == "lm":
        return load_recipe(None, raw, world_size)
    recipe = _build(MultimodalRecipe, raw, "recipe")
    validate_multimodal(recipe)
    return recipe


def recipe_to_dict(r: TrainRecipe | MultimodalRecipe) -> dict[str, Any]:
    return dataclasses.asdict(r)


# ------------------------------------------------------------------------------------------------------------
# Multimodal recipes


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
    tokenizer: str = "char"  # "char" (printable ASCII + the training text's characters) | "gpt2"


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


@dataclass
class MultimodalRecipe:
    """A multimodal run: data mix, model presets, a staged schedule (``train_mm.Stage`` rows)."""

    task: Literal["multimodal", "contrastive"] = "multimodal"
    out_dir: str = "runs/multimodal"  # metrics.jsonl, recipe.json, eval.json, checkpoints/step_N/
    data: MMDataSpec = field(default_factory=MMDataSpec)
    model: MMModelSpec = field(default_factory=MMModelSpec)
    stages: list[Stage] = field(default_factory=lambda: [Stage("full", 1000)])
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    dtype: Literal["bfloat16", "float32"] = "float32"  # autocast dtype (bf16 pays off only with AMX / GPUs)
    batch_size: int = 32
    grad_clip: float = 1.0
    spec_augment: bool = False  # SpecAugment on training log-mels (train_mm.spec_augment)
    ctc_weight: float = 0.0  # > 0: auxiliary CTC loss on the audio encoder (train_mm.AudioCTC; module ctc_head)
    max_minutes: float | None = None  # wall-clock budget, shared by the stages in proportion to their steps
    log_interval: int = 25
    max_new_tokens: int = 24  # generation budget when scoring answers


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


def validate_multimodal(r: MultimodalRecipe) -> None:
    """Cross-field checks: data present, positive sizes, and every module a stage names exists in the model
    (the model is built once to ask it: names come from the model, never from a list kept here)."""
    from omnigpt.train.multimodal_lib import module_groups

    if not r.data.train:
        raise RecipeError("data.train: list at least one prepared directory ({dir: DIR, weight: 1.0})")
    for where, sources in (("data.train", r.data.train), ("data.eval", r.data.eval)):
        for i, s in enumerate(sources):
            if s.weight <= 0 or not 0.0 <= s.holdout < 1.0 or (s.limit is not None and s.limit <= 0):
                raise RecipeError(f"{where}[{i}] ({s.dir}): weight must be > 0, holdout in [0, 1), limit > 0")
    if r.data.tokenizer not in ("char", "gpt2"):
        raise RecipeError(f"data.tokenizer: must be 'char' or 'gpt2', got {r.data.tokenizer!r}")
    for k in ("batch_size", "log_interval", "max_new_tokens"):
        if getattr(r, k) <= 0:
            raise RecipeError(f"{k}: must be positive, got {getattr(r, k)}")
    if r.threads is not None and r.threads <= 0:
        raise RecipeError(f"threads: must be positive, got {r.threads}")
    if not r.stages:
        raise RecipeError("stages: list at least one stage ({name: full, steps: 1000, lr: 1e-3})")
    # Built on the CPU: initialising on the meta device first loads torch._decomp, which takes seconds.
    model: Any
    if r.task == "multimodal":
        from omnigpt.models.multimodal import MultimodalGPT

        if not (r.model.vision or r.model.audio):
            raise RecipeError("model: a multimodal recipe needs model.vision and/or model.audio (encoder presets)")
        model = MultimodalGPT(multimodal_config(r.model))
    else:
        from omnigpt.models.contrastive import ContrastiveModel

        model = ContrastiveModel(contrastive_config(r.model))
    if r.ctc_weight < 0 or (r.ctc_weight > 0 and not (r.task == "multimodal" and r.model.audio)):
        raise RecipeError(f"ctc_weight: must be >= 0, and > 0 only with an audio encoder (got {r.ctc_weight})")
    if r.ctc_weight > 0:
        from omnigpt.train.multimodal_lib import AudioCTC

        model = AudioCTC(model, r.ctc_weight)
    modules = sorted(module_groups(model))
    for i, st in enumerate(r.stages):
        for key, names in (("train", st.train or ()), ("lr_scale", st.lr_scale)):
            if unknown := sorted(set(names) - set(modules)):
                raise RecipeError(f"stages[{i}] ({st.name}).{key}: unknown module {unknown[0]!r}; this model's "
                                  f"modules: {', '.join(modules)}")
