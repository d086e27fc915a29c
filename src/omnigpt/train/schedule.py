"""Optimizer and learning-rate schedule for every task: stages, per-module parameter groups, warmup + cosine.

A run is a list of stages (LLaVA-1.5's two-stage recipe: first align the projector with everything else frozen,
then train all; a plain LM run is one stage). Each stage names

* the modules it trains (``train``; None = all) — the others get ``requires_grad_(False)`` and no optimizer state;
* its peak ``lr`` and per-module multipliers (``lr_scale``: open_clip / nanoVLM's separate rates for the
  projector and the backbones), realised as ordinary AdamW param-group ``lr`` values;
* linear warmup over ``warmup`` steps, then a cosine from the peak down to ``min_lr_ratio`` × peak at the stage's
  last step (nanoGPT's ``get_lr``).

Each stage gets a fresh AdamW (decay on matrices only: Linear weights and embeddings; never biases or norm gains).
The learning rate is a pure function of (stage, step in stage) — nothing to checkpoint but the two counters —
unless a wall-clock budget is set: then the cosine follows whichever is further along, the step count or the
elapsed share of the stage's time, so a time-limited run still ends its schedule at the floor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Stage:
    """One phase of the schedule. Unset fields (None) take the recipe's values (``lr``, ``warmup`` ...)."""

    name: str = "full"
    steps: int | None = None  # None: the rest of max_steps (only the last stage may leave it open)
    lr: float | None = None
    train: tuple[str, ...] | None = None  # module names trained; None = every module
    lr_scale: dict[str, float] = field(default_factory=dict)  # module → multiplier of lr
    warmup: int | None = None
    min_lr_ratio: float | None = None  # cosine floor as a fraction of the peak
    weight_decay: float | None = None

    def lr_multiplier(self, step: int) -> float:
        """Multiplier of the peak lr at ``step`` of this stage (fields resolved). Linear warmup from ~0, then cosine
        from 1 to ``min_lr_ratio`` at the last step: a pure function of the step, so a recipe reproduces on any
        machine however fast."""
        assert self.steps is not None and self.warmup is not None and self.min_lr_ratio is not None
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = (step - self.warmup) / max(self.steps - self.warmup, 1)
        coeff = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))  # 1 → 0
        if not self.lr:
            return 0.0
        # nanoGPT's get_lr, (min_lr + coeff · (lr − min_lr)) / lr, term for term: the same floats as its runs
        min_lr = self.lr * self.min_lr_ratio
        return (min_lr + coeff * (self.lr - min_lr)) / self.lr


def module_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters by module name: ``model.parameter_groups()`` when defined, else the direct children (and
    parameters held by the model itself, e.g. CLIP's ``logit_scale``). A parameter shared by two modules (a tied
    LM head) belongs to the first."""
    if hasattr(model, "parameter_groups"):
        groups = dict(model.parameter_groups())
    else:
        groups = {name: list(child.parameters()) for name, child in model.named_children()}
        groups |= {name: [p] for name, p in model.named_parameters(recurse=False)}
    seen: set[int] = set()
    out: dict[str, list[nn.Parameter]] = {}
    for name, params in groups.items():
        mine = [p for p in params if id(p) not in seen]
        seen.update(id(p) for p in mine)
        if mine:
            out[name] = mine
    return out


def build_optimizer(model: nn.Module, stage: Stage, betas: tuple[float, float], eps: float,
                    fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over the modules ``stage`` trains: per module one decayed group (matrices) and one not (biases, norms,
    scalars), each with ``lr`` = peak × the module's ``lr_scale``, remembered as ``base_lr``; untrained modules are
    frozen. Unknown module names raise, naming the model's modules."""
    groups = module_groups(model)
    for key, names in (("train", stage.train or ()), ("lr_scale", stage.lr_scale)):
        if unknown := sorted(set(names) - set(groups)):
            raise ValueError(f"stage {stage.name!r}.{key}: unknown module {unknown[0]!r}; this model's modules: "
                             f"{', '.join(sorted(groups))}")
    assert stage.lr is not None and stage.weight_decay is not None
    param_groups: list[dict[str, Any]] = []
    for name, params in groups.items():
        trained = stage.train is None or name in stage.train
        for p in params:
            p.requires_grad_(trained)
        if not trained:
            continue
        lr = stage.lr * stage.lr_scale.get(name, 1.0)
        decay = [p for p in params if p.dim() >= 2]
        rest = [p for p in params if p.dim() < 2]
        for ps, wd in ((decay, stage.weight_decay), (rest, 0.0)):
            if ps:
                param_groups.append({"params": ps, "lr": lr, "base_lr": lr, "weight_decay": wd, "module": name})
    if not param_groups:
        raise ValueError(f"stage {stage.name!r} trains no parameters")
    return torch.optim.AdamW(param_groups, betas=betas, eps=eps, fused=fused)


def set_lr(optimizer: torch.optim.Optimizer, multiplier: float) -> float:
    """Set every group's lr to its ``base_lr`` × ``multiplier``; returns the first group's lr (for logs)."""
    for g in optimizer.param_groups:
        g["lr"] = g["base_lr"] * multiplier
    return optimizer.param_groups[0]["lr"]


__all__ = ["Stage", "build_optimizer", "module_groups", "set_lr"]
