"""The task protocol: the hooks the one ``Trainer`` calls, and the registry the trainer finds tasks in.

The applications (``omnigpt.apps``, a higher layer) register their tasks here by name when ``omnigpt.apps`` is
imported, which happens before any recipe exists (recipes are parsed by ``omnigpt.apps.load_recipe``). The trainer
looks a task up by the recipe's ``task`` name, so it never imports an application."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from omnigpt.checkpoints.state import load_model
from omnigpt.models.lora import LoRAConfig, LoRAWeights, apply_lora
from omnigpt.train.recipe import RecipeError
from omnigpt.train.schedule import module_groups


class Task:
    """Base class: the hooks the ``Trainer`` calls (see the module docstring)."""

    name: ClassVar[str]
    data_spec: ClassVar[type]  # the recipe's ``data:`` section (a dataclass; train/recipe.py checks its types)
    model_spec: ClassVar[Any]  # the recipe's ``model:`` section (a dataclass, or a mapping type)
    unused_parameters: ClassVar[bool] = False  # DDP: some steps leave trained parameters without gradient
    model_prefix: ClassVar[str] = "model."  # where ``model`` sits inside ``train_module()``'s state dict

    model: nn.Module
    preprocessor: Any  # tokenizer or processor, saved with the model
    tokens_per_step: int  # for throughput logs
    lora: LoRAWeights | None = None  # the adapters, when the recipe fine-tunes with LoRA (``with_lora``)
    lora_prefix: str = ""  # where the adapted module sits in ``model``'s state dict ("" = all of it)

    def __init__(self, recipe: Any) -> None:
        self.r = recipe

    @classmethod
    def check_recipe(cls, recipe: Any) -> None:
        """Raise ``RecipeError`` for what only this task can check."""

    @classmethod
    def prepare(cls, recipe: Any) -> None:
        """Prepare data on rank 0 (the other ranks wait, then read it)."""

    def with_lora(self, module: nn.Module, config: LoRAConfig | None, prefix: str = "") -> None:
        """LoRA as a model converter: adapters on ``module``'s linears (``config.targets``), the base frozen and
        B = 0, so the model computes what it did; ``lora`` holds them for the loss module's parameter groups.
        ``prefix``: ``module``'s place in ``model`` (``"transformer."``). Nothing happens when ``config`` is None."""
        if config is not None:
            apply_lora(module, config)
            self.lora, self.lora_prefix = LoRAWeights(module), prefix

    def load_checkpoint(self, checkpoint: Path) -> None:
        """Resume: put the saved model's weights into ``model`` (training-only modules, LoRA adapters among them,
        come from ``trainer_state/modules.pt`` afterwards). With LoRA the checkpoint holds the merged model, so only
        what lies outside the adapted module is taken; the frozen base stays the pretrained one."""
        saved = load_model(checkpoint).state_dict()
        if self.lora is None:
            self.model.load_state_dict(saved)
            return
        outside = {k: v for k, v in saved.items() if not k.startswith(self.lora_prefix)}
        result = self.model.load_state_dict(outside, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{checkpoint}: weights the model does not have: {result.unexpected_keys[:5]}")

    def new_model(self) -> nn.Module:
        """A fresh model of the same configuration (FSDP gathers the trained weights into it)."""
        return type(self.model)(self.model.config)

    def train_module(self) -> nn.Module:
        raise NotImplementedError

    def batch(self, step: int, start: int, count: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def evaluate(self, limit: int | None, dtype: torch.dtype | None, loss_module: nn.Module | None,
                 ) -> dict[str, Any]:
        """Validation metrics on the first ``limit`` items (all when None); the trainer calls it with the model in
        eval mode, without gradients, under autocast to ``dtype`` (``loss_module``: the FSDP-wrapped loss)."""
        raise NotImplementedError

    @classmethod
    def evaluate_run(cls, checkpoint: Path, out: Path, limit: int | None = None) -> dict[str, Any]:
        """``omnigpt eval``: the task's metrics of a saved checkpoint on its held-out test data, with the same-run
        ``baselines``; pictures and sample tables go into the directory ``out``. Returns what ``eval.json`` holds."""
        raise NotImplementedError(f"task {cls.name!r} has no checkpoint evaluation")


def check_stage_modules(r: Any, modules: Sequence[str], owner: str = "task") -> None:
    """Every module a stage trains or scales is one of ``modules`` (the names ``parameter_groups`` gives)."""
    for i, st in enumerate(r.stages):
        for key, names in (("train", st.train or ()), ("lr_scale", st.lr_scale)):
            if unknown := sorted(set(names) - set(modules)):
                raise RecipeError(f"stages[{i}] ({st.name}).{key}: unknown module {unknown[0]!r}; this {owner}'s "
                                  f"modules: {', '.join(modules)}")


class EpochOrder:
    """Which of ``n`` items row g of a run reads (g = step × batch_size + j): a seeded permutation per epoch, from
    a private generator (the global RNG is untouched), so a batch is a pure function of (seed, step) whatever the
    world size or resume point. The current epoch's permutation is cached."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._perm: tuple[int, torch.Tensor] | None = None

    def __call__(self, g: int) -> int:
        epoch, i = divmod(g, self.n)
        if self._perm is None or self._perm[0] != epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(self.n, generator=gen))
        return int(self._perm[1][i])

    def rows(self, step: int, start: int, count: int, batch_size: int) -> list[int]:
        """Item indices of rows ``start … start+count-1`` of step ``step``'s global batch."""
        first = step * batch_size + start
        return [self(g) for g in range(first, first + count)]


class LossOf(nn.Module):
    """``model(**batch).loss`` as a module (what DDP wraps), with the model's parameter groups."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return module_groups(self.model)

    def forward(self, **batch: torch.Tensor) -> torch.Tensor:
        return self.model(**batch).loss


class ClassifierLoss(nn.Module):
    """Cross-entropy of a classifier's logits ``model(**inputs).logits`` (B, K) against ``labels`` (B,), in float32,
    with optional label smoothing: the train module of every classification task (text, image). ``groups`` names
    the trained parameters when they are not the model's own groups (LoRA adapters and the head)."""

    def __init__(self, model: nn.Module, label_smoothing: float = 0.0,
                 groups: Callable[[], dict[str, list[nn.Parameter]]] | None = None) -> None:
        super().__init__()
        self.model, self.label_smoothing, self._groups = model, label_smoothing, groups

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return self._groups() if self._groups is not None else module_groups(self.model)

    def forward(self, labels: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        logits = self.model(**inputs).logits  # (B, K)
        return nn.functional.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode without gradients for the block, then back in the mode it was in. The trainer runs
    ``Task.evaluate`` inside it, so no task switches modes itself."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was)


_REGISTRY: dict[str, Callable[[], type[Task]]] = {}


def register_task(name: str, load: Callable[[], type[Task]]) -> None:
    """Register task ``name``; ``load`` imports and returns its class (called on first use)."""
    _REGISTRY[name] = load


def task_names() -> list[str]:
    return list(_REGISTRY)


def task_class(name: str) -> type[Task]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(_REGISTRY) or 'none (import omnigpt.apps)'}")
    return _REGISTRY[name]()


__all__ = ["ClassifierLoss", "EpochOrder", "LossOf", "Task", "check_stage_modules", "evaluating", "register_task",
           "task_class", "task_names"]
