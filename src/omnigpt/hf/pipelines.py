"""``omnigpt.pipeline(task, model=...)``: transformers' pipelines, with their task names and output shapes.

    >>> from omnigpt import pipeline
    >>> pipeline("sentiment-analysis", model="runs/apps/sentiment-zh")("这个手机很好用")
    [{'label': 'positive', 'score': 0.97}]
    >>> pipeline("summarization", model="runs/apps/summarize-bbc")(article)
    [{'summary_text': '...'}]
    >>> pipeline("translation_en_to_es", model="runs/apps/translate-en-es")("In the beginning ...")
    [{'translation_text': '...'}]
    >>> pipeline("text-generation")("The capital of France is", max_new_tokens=8)
    [{'generated_text': 'The capital of France is Paris...'}]

``model`` is a run directory (its newest checkpoint), a checkpoint directory or an offline name
(``checkpoints.registry``); a model trained by an application task carries its task card (``text/task_card.py``),
so the pipeline prompts it the way it was trained. Without a card a chat model (SmolLM2-Instruct, the default for
text generation, summarization and translation) is prompted zero-shot with an instruction. One input gives a list
with one dict, a list of inputs a list of dicts (text generation: a list of lists), as in transformers.
``automatic-speech-recognition`` runs Whisper (``whisper-tiny.en`` by default); image classification and
text-to-image live in ``hf/vision_pipelines.py`` and register in ``PIPELINES`` the same way.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from omnigpt.checkpoints.registry import load
from omnigpt.text.task_card import classification_ids, prompt_ids, stop_ids, task_card

DEFAULT_CHAT_MODEL = "smollm2-135m-instruct"
LANGUAGES = {"en": "English", "es": "Spanish", "fr": "French", "de": "German", "it": "Italian", "pt": "Portuguese",
             "zh": "Chinese", "ja": "Japanese", "ru": "Russian", "nl": "Dutch"}

# task name -> "module:factory"; factory(model, device, **kwargs) -> a callable pipeline
PIPELINES: dict[str, str] = {
    "text-classification": "omnigpt.hf.pipelines:TextClassificationPipeline",
    "summarization": "omnigpt.hf.pipelines:SummarizationPipeline",
    "translation": "omnigpt.hf.pipelines:TranslationPipeline",
    "text-generation": "omnigpt.hf.pipelines:TextGenerationPipeline",
    "automatic-speech-recognition": "omnigpt.hf.pipelines:SpeechRecognitionPipeline",
    "image-classification": "omnigpt.hf.vision_pipelines:image_classification",
    "text-to-image": "omnigpt.hf.vision_pipelines:text_to_image",
    "object-detection": "omnigpt.hf.detection_pipeline:object_detection",
    "audio-classification": "omnigpt.hf.audio_pipelines:audio_classification",
}
ALIASES = {"sentiment-analysis": "text-classification"}


def _texts(inputs: str | Sequence[str]) -> tuple[list[str], bool]:
    """(the texts, whether one text was given); empty or non-text input is an error naming its position."""
    single = isinstance(inputs, str)
    texts = [inputs] if single else list(inputs)
    if not texts:
        raise ValueError("no inputs: pass a text or a non-empty list of texts")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"input {i}: expected text (str), got {type(t).__name__}")
        if not t.strip():
            raise ValueError(f"input {i}: empty text")
    return texts, single


class Pipeline:
    """A loaded model and its task card; subclasses implement ``__call__``."""

    task: str = ""

    def __init__(self, model: str | Path | None = None, device: str | None = None, **defaults: Any) -> None:
        if model is None:
            if self.task == "text-classification":
                raise ValueError("text-classification needs model=RUN: a run of the classify task (e.g. "
                                 "runs/apps/sentiment-zh; configs/tasks/sentiment-zh.yaml trains one)")
            model = DEFAULT_CHAT_MODEL
        self.name = str(model)
        self.model, self.tokenizer, self.template, _ = load(model, device)
        self.card = task_card(self.model.config)
        self.defaults = defaults
        have = self.card.get("pipeline")
        if have is not None and have != self.task:
            raise ValueError(f"model {self.name} was trained for {have!r}, not {self.task!r}")


class TextClassificationPipeline(Pipeline):
    task = "text-classification"

    def __init__(self, model: str | Path | None = None, device: str | None = None, **defaults: Any) -> None:
        super().__init__(model, device, **defaults)
        id2label = self.model.config.extra.get("id2label")
        if not self.card or not id2label or not hasattr(self.model, "score"):
            raise ValueError(f"model {self.name} is not a text classifier (no task card with labels and no score "
                             f"head); train one with the classify task")
        self.labels = [id2label[str(i)] for i in range(len(id2label))]

    def __call__(self, inputs: str | Sequence[str], top_k: int | None = 1) -> list[Any]:
        """``[{"label", "score"}]`` per text (the best label; ``top_k=None``: every label, best first)."""
        from omnigpt.generate.classify import predict

        texts, _ = _texts(inputs)
        probs = predict(self.model, [classification_ids(self.card, self.tokenizer, t) for t in texts])
        out = []
        for p in probs:
            ranked = [{"label": self.labels[int(i)], "score": float(p[i])} for i in p.argsort(descending=True)]
            out.append(ranked[0] if top_k == 1 else ranked[: top_k or None])
        return out


class _Seq2SeqPipeline(Pipeline):
    key = ""

    def zero_shot_card(self) -> dict[str, Any]:
        raise NotImplementedError

    def __init__(self, model: str | Path | None = None, device: str | None = None, **defaults: Any) -> None:
        super().__init__(model, device, **defaults)
        if not self.card:
            if self.template is None:
                raise ValueError(f"model {self.name} has neither a {self.task} task card nor a chat template to "
                                 f"prompt it zero-shot")
            self.card = self.zero_shot_card()

    def __call__(self, inputs: str | Sequence[str], max_new_tokens: int | None = None,
                 batch_size: int = 16) -> list[dict[str, str]]:
        from omnigpt.generate.decode import greedy_ids

        texts, _ = _texts(inputs)
        prompts = [prompt_ids(self.card, self.tokenizer, t, self.template) for t in texts]
        got = greedy_ids(self.model, prompts, max_new_tokens=max_new_tokens or self.card["max_new_tokens"],
                         stop_token_ids=stop_ids(self.card, self.tokenizer), batch_size=batch_size)
        return [{self.key: self.tokenizer.decode(g, skip_special_tokens=True).strip()} for g in got]


class SummarizationPipeline(_Seq2SeqPipeline):
    task, key = "summarization", "summary_text"

    def zero_shot_card(self) -> dict[str, Any]:
        return {"pipeline": self.task, "format": "chat", "max_source_tokens": 768, "max_new_tokens": 64,
                "instruction": "Summarize this text in one sentence.\n\n{text}"}


class TranslationPipeline(_Seq2SeqPipeline):
    task, key = "translation", "translation_text"

    def __init__(self, model: str | Path | None = None, device: str | None = None, src_lang: str | None = None,
                 tgt_lang: str | None = None, **defaults: Any) -> None:
        for code in (src_lang, tgt_lang):
            if code is not None and code not in LANGUAGES:
                raise ValueError(f"unknown language code {code!r}; known: {', '.join(LANGUAGES)}")
        self.src_lang, self.tgt_lang = src_lang, tgt_lang
        super().__init__(model, device, **defaults)
        have = (self.card.get("src_lang"), self.card.get("tgt_lang"))
        want = (src_lang or have[0], tgt_lang or have[1])
        if have != want:
            raise ValueError(f"model {self.name} translates {have[0]} to {have[1]}, not {want[0]} to {want[1]}")

    def zero_shot_card(self) -> dict[str, Any]:
        if self.src_lang is None or self.tgt_lang is None:
            raise ValueError("zero-shot translation needs the languages: pipeline('translation_en_to_es', ...)")
        return {"pipeline": self.task, "format": "chat", "max_source_tokens": 512, "max_new_tokens": 128,
                "src_lang": self.src_lang, "tgt_lang": self.tgt_lang,
                "instruction": f"Translate this {LANGUAGES[self.src_lang]} text to {LANGUAGES[self.tgt_lang]}."
                               "\n\n{text}"}


class TextGenerationPipeline(Pipeline):
    task = "text-generation"

    def __call__(self, inputs: str | Sequence[str], max_new_tokens: int = 32, temperature: float = 0.0,
                 return_full_text: bool = True, seed: int | None = None) -> list[Any]:
        """``[{"generated_text"}]`` for one prompt, a list of those per prompt for a list (transformers' shapes).
        Greedy by default (``temperature > 0`` samples)."""
        from omnigpt.generate.text import generate_text

        texts, single = _texts(inputs)
        outs = generate_text(self.model, self.tokenizer, texts, max_new_tokens=max_new_tokens,
                             temperature=temperature, seed=seed)
        rows = [[{"generated_text": (t if return_full_text else "") + o}] for t, o in zip(texts, outs, strict=True)]
        return rows[0] if single else rows


class SpeechRecognitionPipeline:
    """Whisper (``whisper-tiny.en`` by default, ``whisper-base``, a CTranslate2 Whisper directory, or a run /
    checkpoint directory of the ``asr-whisper`` task): ``{"text"}`` for one recording (a path or a 16 kHz waveform),
    a list of those for a list — transformers' shapes."""

    task = "automatic-speech-recognition"

    def __init__(self, model: str | Path | None = None, device: str | None = None, language: str | None = None,
                 beam_size: int = 1) -> None:
        from omnigpt.checkpoints.ctranslate2 import load_tokenizer, load_whisper
        from omnigpt.checkpoints.pretrained import load_pretrained
        from omnigpt.checkpoints.registry import from_pretrained
        from omnigpt.checkpoints.state import resolve_checkpoint
        from omnigpt.models.whisper import Whisper

        self.name = str(model or "whisper-tiny.en")
        path = Path(self.name)
        if path.is_dir() and (path / "model.bin").is_file():  # a CTranslate2 directory
            m, tok = load_whisper(path)
        elif path.is_dir():  # a saved model, or a run: its newest checkpoint (safetensors + config.json)
            ckpt = resolve_checkpoint(path)
            m = load_pretrained(ckpt)
            tok = load_tokenizer(ckpt) if isinstance(m, Whisper) else None
        else:
            pre = from_pretrained(self.name)
            m, tok = pre.model, pre.preprocessor
        if not isinstance(m, Whisper):
            raise ValueError(f"model {self.name} is a {type(m).__name__}, not a Whisper speech recognizer")
        self.model = m.to(torch.device(device)) if device else m
        self.tokenizer, self.language, self.beam_size = tok, language, beam_size

    def __call__(self, inputs: Any) -> Any:
        from omnigpt.generate.whisper import transcribe

        single = isinstance(inputs, str | Path) or (hasattr(inputs, "ndim") and inputs.ndim == 1)
        out = []
        for i, audio in enumerate([inputs] if single else list(inputs)):
            try:
                result = transcribe(self.model, self.tokenizer, audio, language=self.language,
                                    beam_size=self.beam_size)
            except ValueError as e:
                raise ValueError(f"input {i} ({audio if isinstance(audio, str | Path) else 'array'}): {e}") from None
            out.append({"text": result.text.strip()})
        return out[0] if single else out


def resolve_task(task: str) -> tuple[str, dict[str, str]]:
    """(registry name, keyword arguments) of a transformers task name (``translation_en_to_es`` → translation)."""
    if task.startswith("translation_"):
        parts = task.removeprefix("translation_").split("_to_")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"task {task!r}: expected translation_XX_to_YY (e.g. translation_en_to_es)")
        return "translation", {"src_lang": parts[0], "tgt_lang": parts[1]}
    name = ALIASES.get(task, task)
    if name not in PIPELINES:
        valid = sorted({*PIPELINES, *ALIASES, "translation_XX_to_YY"})
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(valid)}")
    return name, {}


def pipeline(task: str, model: str | Path | None = None, device: str | None = None, **kwargs: Any) -> Callable:
    """The pipeline for ``task`` (transformers' names: ``sentiment-analysis``, ``text-classification``,
    ``summarization``, ``translation_en_to_es``, ``text-generation``, ...) with ``model`` loaded on ``device``."""
    name, extra = resolve_task(task)
    module, factory = PIPELINES[name].split(":")
    return getattr(importlib.import_module(module), factory)(model=model, device=device, **extra, **kwargs)


__all__ = ["ALIASES", "PIPELINES", "Pipeline", "SpeechRecognitionPipeline", "SummarizationPipeline",
           "TextClassificationPipeline", "TextGenerationPipeline", "TranslationPipeline", "pipeline",
           "resolve_task"]
