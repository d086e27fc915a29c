"""The ``lm`` task: a GPT trained on next-token prediction over prepared token shards.

Batches come from ``data.shards.WindowSampler`` (windows of block_size + 1 tokens, a seeded permutation per epoch:
sample g of the run is a pure function of (seed, g)); the loss is the fused LM-head cross-entropy
(``kernels/losses.py``: no (N, V) logits kept); validation is a full pass over the val split
(``train/evaluate.py``: loss, perplexity, bits per byte), or its first ``eval_limit`` tokens during training.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from omnigpt.data.shards import MANIFEST, DataSpec, TokenData, WindowSampler, prepare_data
from omnigpt.kernels.losses import fused_linear_cross_entropy
from omnigpt.models.gpt import GPT
from omnigpt.train.evaluate import evaluate
from omnigpt.train.recipe import RecipeError, model_config
from omnigpt.train.schedule import module_groups
from omnigpt.train.task import Task


class LMLoss(nn.Module):
    """GPT + the fused LM-head cross-entropy; the module DDP/FSDP wrap. ``targets`` hold the next token of each
    position (already shifted), so a window of T + 1 tokens gives T targets."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return module_groups(self.model)  # transformer, lm_head (tied to wte: counted once)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        h = self.model.transformer(input_ids).last_hidden_state  # (B, T, C)
        return fused_linear_cross_entropy(h, self.model.lm_head.weight, targets)


def ensure_data(spec: DataSpec, progress: bool) -> Path:
    """The prepared data directory: used as is, or prepared from ``data.sources`` when missing."""
    d = Path(spec.dir)
    if (d / MANIFEST).is_file():
        have = json.loads((d / MANIFEST).read_text()).get("spec", {})
        if spec.sources and have != spec.fingerprint():
            raise ValueError(f"{d} was prepared from {have}, but the recipe asks for {spec.fingerprint()}; "
                             f"delete it or point data.dir elsewhere")
        return d
    if not spec.sources:
        raise FileNotFoundError(f"data.dir {d} has no prepared data ({MANIFEST}) and data.sources is empty; "
                                f"run `omnigpt prepare` or list sources in the recipe")
    return prepare_data(spec, progress=progress)


class LMTask(Task):
    name = "lm"
    data_spec, model_spec = DataSpec, dict[str, Any]  # model: {"preset": name, **GPTConfig overrides}

    @classmethod
    def check_recipe(cls, r: Any) -> None:
        if not 0.0 < r.data.val_fraction < 1.0:
            raise RecipeError(f"data.val_fraction: must be in (0, 1), got {r.data.val_fraction}")
        model_config(r.model)  # preset and overrides valid

    @classmethod
    def prepare(cls, r: Any) -> None:
        ensure_data(r.data, r.progress)

    def __init__(self, r: Any) -> None:
        super().__init__(r)
        self.data = TokenData(r.data.dir)
        self.preprocessor = self.data.tokenizer()
        self.config = model_config(r.model, vocab_size=self.data.vocab_size)
        if self.data.vocab_size > self.config.vocab_size:
            raise ValueError(f"model.vocab_size {self.config.vocab_size} is smaller than the data's vocabulary "
                             f"{self.data.vocab_size}")
        self.block_size = self.config.block_size
        self.sampler = WindowSampler(self.data.shards("train"), self.block_size, r.seed)
        self.model = GPT(self.config)
        self.tokens_per_step = r.batch_size * self.block_size

    def train_module(self) -> nn.Module:
        return LMLoss(self.model)

    def batch(self, step: int, start: int, count: int) -> dict[str, torch.Tensor]:
        xy = self.sampler.batch(step * self.r.batch_size + start, count)  # (count, T + 1)
        return {"input_ids": xy[:, :-1], "targets": xy[:, 1:]}

    def evaluate(self, limit: int | None, dtype: torch.dtype | None, loss_module: nn.Module | None,
                 ) -> dict[str, Any]:
        res = evaluate(self.model, self.data, "val", batch_size=self.r.micro_batch or self.r.batch_size,
                       block_size=self.block_size, max_tokens=limit, dtype=dtype, shard=loss_module is None,
                       loss_fn=loss_module)
        return {"val_loss": res.loss, "val_perplexity": res.perplexity, "val_bits_per_byte": res.bits_per_byte,
                "val_tokens": res.tokens}


__all__ = ["LMLoss", "LMTask", "ensure_data"]
