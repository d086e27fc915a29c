"""What the study trains: the four families as overrides of one decoder, three sizes, and the recipes.

Every run of a plan sees the same corpus and tokenizer, the same windows in the same order (the sampler is a pure
function of the seed: seed s gives every family the same token stream), the same number of steps, batch and
context, and the same schedule; only the architecture and the (tuned-once) learning rate differ.

Families (``config.py`` presets, deviations from the papers stated):

* ``gpt1`` — post-LN blocks ``LN(x + f(x))``, no final LayerNorm, learned positions (``tiny-gpt1``). Deviation: the
  residual projections get GPT-2's 1/√(2·n_layer) init (``models.gpt.init_weights`` applies it to every family).
* ``gpt2`` — pre-LN blocks + final ``ln_f``, learned positions, GELU MLP (``tiny-gpt2``).
* ``gpt3`` — GPT-2 with odd layers banded to the last ``window`` tokens (``local_window``).
* ``llama`` — RoPE, RMSNorm, SwiGLU (hidden 8C/3 rounded up to 8, so its MLP has a 4C MLP's parameters), grouped-query
  attention with n_head/2 key/value heads, no biases (``llama-tiny``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("gpt1", "gpt2", "gpt3", "llama")
FAMILY_NAMES = {"gpt1": "GPT-1 (post-LN)", "gpt2": "GPT-2 (pre-LN)", "gpt3": "GPT-3 (dense/banded)",
                "llama": "Llama (RoPE, RMSNorm, SwiGLU, GQA)"}

# Learning rates tuned once per family on the middle size, seed 0 (lowest val loss on the first 32,768 val tokens):
#   quick: `omnigpt study --quick --sweep --no-multimodal --out runs/study-sweep` (2026-12-02, this 2-core CPU), grid
#   1e-3 / 3e-3 / 1e-2 / 3e-2:   gpt1 5.905 / 6.070 / 6.072 / 6.076;  gpt2 5.647 / 5.231 / 5.350 / 5.694;
#                                gpt3 5.650 / 5.199 / 5.394 / 5.572;  llama 5.743 / 5.473 / 5.600 / 5.760;
#   gpt1's best sat at the grid's edge, so one more run at 3e-4 (same recipe): 6.284 — 1e-3 stays.
# --full always runs its own sweep (over ``full()``'s lr_grid, which starts at 3e-4).
TUNED_LR_QUICK = {"gpt1": 1e-3, "gpt2": 3e-3, "gpt3": 3e-3, "llama": 3e-3}


@dataclass(frozen=True)
class Size:
    name: str
    n_layer: int
    n_embd: int
    n_head: int


@dataclass(frozen=True)
class StudyPlan:
    """A study's budget and grid. ``quick()`` and ``full()`` are the two the command runs; tests make tiny ones."""

    mode: str
    sizes: tuple[Size, ...]
    steps: int
    batch_size: int
    block_size: int
    window: int  # GPT-3's band in the main grid
    window_sweep: tuple[int, ...]  # extra GPT-3 runs at the middle size (seed 0); the main window is reused
    seeds: tuple[int, ...] = (0, 1)
    families: tuple[str, ...] = FAMILIES
    lr_grid: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)
    tuned_lr: dict[str, float] = field(default_factory=lambda: dict(TUNED_LR_QUICK))
    sweep: bool = False  # tune lr on the middle size first (else use ``tuned_lr``)
    warmup: int = 20
    sources: tuple[str, ...] = ("shakespeare",)
    tokenizer: str = "bpe:2048"
    val_tokens: int | None = 32768  # validation: the first N tokens of the val split (None: all of it)
    mm_steps: int = 0  # multimodal comparison: steps per run (0 = left out)
    mm_align_steps: int = 0
    mm_limit: int = 4000  # Fashion-MNIST images per split prepared
    mm_eval_items: int = 200  # test images scored at each point of the accuracy curve
    mm_eval_every: int = 50
    workers: int = 2  # runs in parallel (processes, one thread each); 0 = in this process

    @property
    def middle(self) -> Size:
        return self.sizes[len(self.sizes) // 2]

    @property
    def tokens_per_run(self) -> int:
        return self.steps * self.batch_size * self.block_size

    @staticmethod
    def quick(**over: Any) -> StudyPlan:
        """≤ 10 minutes on 2 CPU cores: 24 LM runs of 200 steps × 16 × 64 tokens (205k tokens each)."""
        base = dict(mode="quick", sizes=(Size("S", 2, 32, 2), Size("M", 2, 64, 4), Size("L", 4, 96, 4)), steps=200,
                    batch_size=16, block_size=64, window=16, window_sweep=(4, 8), mm_steps=150, mm_align_steps=15,
                    mm_eval_every=50)
        return StudyPlan(**{**base, **over})

    @staticmethod
    def full(**over: Any) -> StudyPlan:
        """Longer runs and wider models (4.1M tokens each), the lr sweep, the whole val split, the recipe's 1000
        multimodal steps."""
        base = dict(mode="full", sizes=(Size("S", 2, 64, 4), Size("M", 4, 128, 4), Size("L", 6, 192, 6)),
                    steps=1000, batch_size=32, block_size=128, window=32, window_sweep=(8, 16, 64), sweep=True,
                    lr_grid=(3e-4, 1e-3, 3e-3, 1e-2),
                    warmup=100, val_tokens=None, mm_steps=1000, mm_align_steps=50, mm_limit=10000,
                    mm_eval_items=500, mm_eval_every=100)
        return StudyPlan(**{**base, **over})


def family_model(family: str, size: Size, block_size: int, window: int) -> dict[str, Any]:
    """The recipe's ``model`` section: a preset plus GPTConfig overrides."""
    shape = {"n_layer": size.n_layer, "n_embd": size.n_embd, "n_head": size.n_head, "block_size": block_size,
             "dropout": 0.0}
    if family == "gpt1":
        return {"preset": "tiny-gpt1", **shape}
    if family == "gpt2":
        return {"preset": "tiny-gpt2", **shape}
    if family == "gpt3":
        return {"preset": "tiny-gpt3", **shape, "local_window": window}
    if family == "llama":
        hidden = -(-8 * size.n_embd // 3 // 8) * 8  # 8C/3 rounded up to a multiple of 8
        return {"preset": "llama-tiny", **shape, "n_kv_head": max(1, size.n_head // 2), "n_inner": hidden}
    raise ValueError(f"unknown family {family!r}; families: {', '.join(FAMILIES)}")


def lm_recipe(plan: StudyPlan, data_dir: str, out_dir: str, family: str, size: Size, seed: int, lr: float,
              window: int | None = None) -> dict[str, Any]:
    """One LM run, as a recipe mapping for ``apps.load_recipe(None, recipe)``."""
    return {
        "task": "lm", "out_dir": out_dir,
        "data": {"dir": data_dir, "sources": list(plan.sources), "tokenizer": plan.tokenizer, "val_fraction": 0.1},
        "model": family_model(family, size, plan.block_size, window or plan.window),
        "seed": seed, "threads": 1, "device": "cpu", "dtype": "float32", "matmul_plan": "off",
        "batch_size": plan.batch_size, "max_steps": plan.steps, "lr": lr, "min_lr_ratio": 0.1,
        "warmup": plan.warmup, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.99, "grad_clip": 1.0,
        "log_interval": max(1, plan.steps // 10), "eval_interval": plan.steps, "eval_limit": 2048,
        "final_eval": False, "checkpoint_interval": plan.steps, "keep_checkpoints": 1, "progress": False,
    }


def mm_recipe(plan: StudyPlan, data_dir: str, out_dir: str, staged: bool, seed: int = 0) -> dict[str, Any]:
    """``configs/mm-fmnist.yaml`` at the plan's step count, with the projector-only alignment stage or without."""
    full_stage = {"name": "full", "lr": 2.0e-3, "warmup": 30 if plan.mm_steps >= 300 else 10, "min_lr_ratio": 0.05}
    if staged:
        stages = [{"name": "align", "steps": plan.mm_align_steps, "lr": 3.0e-3, "train": ["vision_projector"]},
                  {**full_stage, "steps": plan.mm_steps - plan.mm_align_steps}]
    else:
        stages = [{**full_stage, "steps": plan.mm_steps}]
    return {
        "task": "multimodal", "out_dir": out_dir,
        "data": {"tokenizer": "char", "train": [{"dir": data_dir, "split": "train"}],
                 "eval": [{"dir": data_dir, "split": "test", "limit": plan.mm_eval_items}]},
        "model": {"text": {"preset": "tiny-gpt2", "n_layer": 2, "n_head": 4, "n_embd": 128, "block_size": 96},
                  "vision": "vit-fmnist", "projector": "mlp"},
        "stages": stages, "seed": seed, "threads": 1, "device": "cpu", "dtype": "float32", "matmul_plan": "off",
        "batch_size": 32, "weight_decay": 0.05, "beta2": 0.98, "log_interval": plan.mm_eval_every,
        "eval_interval": plan.mm_eval_every, "eval_limit": plan.mm_eval_items, "checkpoint_interval": plan.mm_steps,
        "keep_checkpoints": 1, "progress": False,
    }


__all__ = ["FAMILIES", "FAMILY_NAMES", "TUNED_LR_QUICK", "Size", "StudyPlan", "family_model", "lm_recipe", "mm_recipe"]
