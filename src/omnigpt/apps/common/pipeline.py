"""The one ``Pipeline`` base: every task's pipeline (``omnigpt.pipeline(task, model=...)``) is a subclass in its
application's folder, as in transformers' ``pipelines/base.py``.

A call runs ``preprocess`` on each input (given its position, so an error can name it), ``forward`` on batches of
the preprocessed inputs under ``torch.inference_mode``, and ``postprocess`` on each batch's output, one result per
input. One input gives one result, a list of inputs a list of results (transformers' text classification and
text-to-text pipelines: a list in both cases) — the single-vs-list rule is written here once. Call options are
checked once per call by ``options`` (defaults from the constructor, then the call's).

    class ImageClassificationPipeline(Pipeline):
        task = "image-classification"
        def preprocess(self, item, index, top_k): return pixels(item)   # one input → a model input
        def forward(self, batch, top_k): return self.model(torch.stack(batch)).logits
        def postprocess(self, logits, top_k): return [ranked(p, top_k) for p in logits.softmax(-1)]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from omnigpt.checkpoints.registry import Loaded, load
from omnigpt.text.task_card import task_card


class Pipeline:
    """preprocess → forward → postprocess over batches of inputs. Subclasses set ``task``, ``model_types`` (the
    model classes they accept) and ``default_model`` (None: the task needs ``model=``, ``needs`` says which), and
    implement the three steps; ``options`` validates the call's keyword options."""

    task: ClassVar[str] = ""
    model_types: ClassVar[tuple[type, ...]] = (nn.Module,)
    default_model: ClassVar[str | None] = None
    what: ClassVar[str] = "a model for this task"  # "an image classifier": named when the model is of another kind
    needs: ClassVar[str] = "a model directory"  # what ``model=`` must be (said when it is missing or wrong)
    batch_size: ClassVar[int] = 16
    always_list: ClassVar[bool] = False  # one text still gives a list of one (transformers' text pipelines)

    def __init__(self, model: str | Path | None = None, device: str | None = None, **defaults: Any) -> None:
        if model is None:
            if self.default_model is None:
                raise ValueError(f"{self.task} needs model=<{self.needs}>")
            model = self.default_model
        self.name = str(model)
        self.device = torch.device(device or "cpu")
        self.loaded = self.load(model, device)
        self.model, self.preprocessor = self.loaded.model, self.loaded.preprocessor
        if not isinstance(self.model, self.model_types):
            raise ValueError(f"{self.name}: not {self.what} (it holds a {type(self.model).__name__}); pass "
                             f"{self.needs}")
        self.defaults = self.options(**defaults)

    def load(self, model: str | Path, device: str | None) -> Loaded:
        """The model, its preprocessor, chat template and kind (``omnigpt.load``); subclasses with their own
        formats override it."""
        return load(model, device)

    def options(self, **options: Any) -> dict[str, Any]:
        """The call's options, checked (ValueError/TypeError naming the option); default: none accepted."""
        if options:
            raise TypeError(f"{self.task}: unexpected options {sorted(options)}")
        return {}

    def is_single(self, inputs: Any) -> bool:
        """Whether ``inputs`` is one input (anything but a list or tuple)."""
        return not isinstance(inputs, list | tuple)

    def preprocess(self, item: Any, index: int, **options: Any) -> Any:
        """One input → what ``forward`` takes; a bad input raises ValueError naming it (its path, or ``index``)."""
        raise NotImplementedError

    def forward(self, batch: list[Any], **options: Any) -> Any:
        raise NotImplementedError

    def postprocess(self, output: Any, batch: list[Any], **options: Any) -> list[Any]:
        raise NotImplementedError

    def __call__(self, inputs: Any, **options: Any) -> Any:
        single = self.is_single(inputs)
        items = [inputs] if single else list(inputs)
        if not items:
            raise ValueError("no inputs: pass one input or a non-empty list of inputs")
        opts = self.options(**{**self.defaults, **options}) if options else self.defaults  # the call's win
        pre = [self.preprocess(item, i, **opts) for i, item in enumerate(items)]
        out: list[Any] = []
        for start in range(0, len(pre), self.batch_size):
            batch = pre[start : start + self.batch_size]
            with torch.inference_mode():
                output = self.forward(batch, **opts)
            out.extend(self.postprocess(output, batch, **opts))
        return out[0] if single and not self.always_list else out


DEFAULT_CHAT_MODEL = "smollm2-135m-instruct"  # text generation and chat: small and fast, English
MULTILINGUAL_CHAT_MODEL = "qwen2.5-0.5b-instruct"  # zero-shot classification, summarization, translation (en/zh/es)


class TextPipeline(Pipeline):
    """A GPT-family model and its task card (``text/task_card.py``, saved in ``config.extra`` by the task that
    trained it): the card says how the model is prompted, and a card for another task is refused. Without a card a
    chat model (``DEFAULT_CHAT_MODEL`` by default) is prompted zero-shot."""

    default_model = DEFAULT_CHAT_MODEL

    def __init__(self, model: str | Path | None = None, device: str | None = None, **defaults: Any) -> None:
        super().__init__(model, device, **defaults)
        self.tokenizer, self.template = self.preprocessor, self.loaded.template
        self.card = task_card(self.model.config)
        have = self.card.get("pipeline")
        if have is not None and have != self.task:
            raise ValueError(f"model {self.name} was trained for {have!r}, not {self.task!r}")

    def preprocess(self, item: Any, index: int, **options: Any) -> Any:
        """A non-empty text (ValueError naming its position otherwise)."""
        if not isinstance(item, str):
            raise ValueError(f"input {index}: expected text (str), got {type(item).__name__}")
        if not item.strip():
            raise ValueError(f"input {index}: empty text")
        return item


def ranked(probs: torch.Tensor, labels: Sequence[str], top_k: int) -> list[list[dict[str, Any]]]:
    """(N, K) probabilities → per row the ``top_k`` best ``{"label", "score"}``, best first."""
    scores, idx = probs.float().topk(top_k, dim=-1)
    return [[{"label": labels[i], "score": s} for s, i in zip(sr, ir, strict=True)]
            for sr, ir in zip(scores.tolist(), idx.tolist(), strict=True)]


def check_top_k(top_k: Any, n_labels: int, clip: bool = False) -> int:
    """``top_k`` as an int in [1, n_labels]; ``clip``: larger values mean every label (transformers' audio
    pipelines), else they are an error (its image pipelines)."""
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1 or (top_k > n_labels and not clip):
        raise ValueError(f"top_k must be an integer in [1, {n_labels}], got {top_k!r}")
    return min(top_k, n_labels)


__all__ = ["DEFAULT_CHAT_MODEL", "MULTILINGUAL_CHAT_MODEL", "Pipeline", "TextPipeline", "check_top_k", "ranked"]
