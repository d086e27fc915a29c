"""Recipe checks and the tokenizer that the multimodal-data applications share (multimodal, contrastive, llava):
their ``data.train``/``data.eval`` source lists, stage module names checked against the model, GPT-2 or char text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from omnigpt.data.batches import char_tokenizer
from omnigpt.text.gpt2_vocab import gpt2_tokenizer
from omnigpt.train.recipe import RecipeError
from omnigpt.train.schedule import module_groups
from omnigpt.train.task import check_stage_modules


def check_sources(r: Any) -> None:
    """The data sections that multimodal and contrastive recipes share."""
    if not r.data.train:
        raise RecipeError("data.train: list at least one prepared directory ({dir: DIR, weight: 1.0})")
    for where, sources in (("data.train", r.data.train), ("data.eval", r.data.eval)):
        for i, s in enumerate(sources):
            if s.weight <= 0 or not 0.0 <= s.holdout < 1.0 or (s.limit is not None and s.limit <= 0):
                raise RecipeError(f"{where}[{i}] ({s.dir}): weight must be > 0, holdout in [0, 1), limit > 0")
    if r.data.max_new_tokens <= 0:
        raise RecipeError(f"data.max_new_tokens: must be positive, got {r.data.max_new_tokens}")


def check_model_stages(r: Any, module: nn.Module) -> None:
    """Every module a stage trains or scales exists in the model (names come from the model itself)."""
    check_stage_modules(r, sorted(module_groups(module)), owner="model")


def build_tokenizer(r: Any, texts: Sequence[str]) -> Any:
    return gpt2_tokenizer() if r.data.tokenizer == "gpt2" else char_tokenizer(texts)
