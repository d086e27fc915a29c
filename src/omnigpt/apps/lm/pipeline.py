"""``pipeline("text-generation", model=...)``: any GPT-family model continues a prompt (``smollm2-135m-instruct``
by default; an ``lm`` run, a checkpoint directory, a GGUF file).

One prompt returns ``[{"generated_text"}]``, a list of prompts one such list per prompt — transformers' shapes.
Greedy by default (``temperature > 0`` samples, ``seed`` makes it reproducible); ``return_full_text=False`` leaves
the prompt out.
"""

from __future__ import annotations

from typing import Any

from omnigpt.apps.common.pipeline import TextPipeline
from omnigpt.generate.text import generate_text


class TextGenerationPipeline(TextPipeline):
    task = "text-generation"

    def options(self, max_new_tokens: int = 32, temperature: float = 0.0, return_full_text: bool = True,
                seed: int | None = None) -> dict[str, Any]:
        return {"max_new_tokens": max_new_tokens, "temperature": temperature, "return_full_text": return_full_text,
                "seed": seed}

    def forward(self, batch: list[str], max_new_tokens: int, temperature: float, seed: int | None,
                **options: Any) -> list[str]:
        return generate_text(self.model, self.tokenizer, batch, max_new_tokens=max_new_tokens,
                             temperature=temperature, seed=seed)

    def postprocess(self, outs: list[str], batch: list[str], return_full_text: bool, **options: Any) -> list[Any]:
        return [[{"generated_text": (t if return_full_text else "") + o}] for t, o in zip(batch, outs, strict=True)]


__all__ = ["TextGenerationPipeline"]
