"""The ``llava`` task: image captioning and questions by a multimodal decoder, from pretrained parts or from scratch.

LLaVA-1.5's recipe (Liu et al. 2023, "Improved Baselines with Visual Instruction Tuning") on parts that run here:

* **vision tower** — torchvision's ImageNet MobileNetV2 (``model.vision: mobilenet-v2``, the pinned registry
  weights), frozen and in eval mode; its 7×7×1280 feature map becomes 49 image tokens (``vision_grid`` average-pools
  it to fewer). Or a ViT preset trained from scratch (``vit-emoji`` ...).
* **decoder** — a pretrained chat model (``model.decoder: smollm2-135m-instruct``) prompted in its own chat template,
  the image placeholder inside the user turn (``data.llava.ChatProcessor``); or a small GPT from scratch
  (``model.text: {preset: ...}``) with a character tokenizer and "User: … Assistant: " turns — the baseline.
* **projector** — LLaVA-1.5's two-layer MLP from the tower's width to the decoder's.
* **stages** — stage 1 (alignment) trains the projector alone, decoder and tower frozen; stage 2 adds LoRA adapters
  on the decoder (``model.lora``; without it the whole decoder trains). Modules a stage may name:
  ``vision_projector``, ``lora`` (pretrained decoder with LoRA), ``language_model``, ``vision_encoder`` (a ViT).

Data: prepared image directories (``omnigpt prepare-mm``; a missing directory named after a recipe — ``data/emoji``,
``data/openclipart``, ``data/fashion-mnist`` — is prepared on first use, with ``data.prepare[DIR]`` options). Every
image's caption is asked as "What is in this picture?" beside the directory's own questions; rows draw their source
by weight. Conversations are processed as batches are drawn (224-pixel RGB tensors are too big to keep for all).
``evaluate_run`` (``omnigpt eval RUN``) is in ``apps/llava/evaluate.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from omnigpt.apps.common.multimodal import build_tokenizer, check_sources
from omnigpt.apps.llava.data import CAPTION_QUESTION, caption_conversations
from omnigpt.data.batches import collate, mixture_indices, to_example
from omnigpt.models.lora import LoRAConfig, LoRAWeights, lora_parameters
from omnigpt.models.multimodal import MultimodalConfig, MultimodalGPT, ProjectorConfig
from omnigpt.text.chat_processor import ChatProcessor
from omnigpt.text.processors import Processor, ProcessorConfig
from omnigpt.train.recipe import MMSource, RecipeError, model_config
from omnigpt.train.schedule import module_groups
from omnigpt.train.task import Task, check_stage_modules

PRETRAINED_TOWER = "mobilenet-v2"


@dataclass
class LlavaDataSpec:
    """Image sources to train on and to evaluate, how they are asked, and how missing ones are prepared."""

    train: list[MMSource] = field(default_factory=list)
    eval: list[MMSource] = field(default_factory=list)  # held-out images: captions scored by ``omnigpt eval``
    prepare: dict[str, Any] = field(default_factory=dict)  # DIR → {recipe: NAME, **options} for first use
    question: str = CAPTION_QUESTION  # the caption question
    with_questions: bool = True  # also train on each directory's own questions ({split}.llava.json)
    tokenizer: Literal["char", "gpt2"] = "char"  # from scratch only; a pretrained decoder brings its own
    max_new_tokens: int = 16  # generation budget when scoring captions
    recall_items: int = 60  # held-out images ranked against each other's captions for recall@k (omnigpt eval)


@dataclass
class LlavaModelSpec:
    """Exactly one of ``decoder`` (a pretrained chat model) and ``text`` (a GPT preset from scratch)."""

    decoder: str | None = None  # offline name or checkpoint directory of a chat model: smollm2-135m-instruct
    text: dict[str, Any] | None = None  # from scratch: {preset: ..., overrides}
    vision: str = PRETRAINED_TOWER  # mobilenet-v2 (pretrained, frozen) or a ViT preset (trained from scratch)
    vision_grid: int | None = None  # mobilenet-v2: pool the 7×7 map to grid × grid tokens (None: all 49)
    projector: Literal["linear", "mlp"] = "mlp"
    vision_merge: int = 1
    lora: LoRAConfig | None = None  # pretrained decoder: adapters trained in the stages that name ``lora``
    system: str | None = None  # chat decoder: a system prompt (None: the template's default)


def module_names(spec: LlavaModelSpec) -> list[str]:
    """The modules stages may train, known before anything loads."""
    names = ["vision_projector"]
    names += ["lora"] if spec.lora is not None else ["language_model"]
    return names + ([] if spec.vision == PRETRAINED_TOWER else ["vision_encoder"])


def vision_config(spec: LlavaModelSpec) -> dict[str, Any]:
    from omnigpt.models.mobilenet import MobileNetV2Config
    from omnigpt.models.vision import VisionConfig

    if spec.vision == PRETRAINED_TOWER:
        return {"vision": MobileNetV2Config.from_name("mobilenet-v2"), "vision_tower": "mobilenet-v2",
                "vision_grid": spec.vision_grid}
    return {"vision": VisionConfig.from_name(spec.vision)}


class LlavaLoss(nn.Module):
    """The model's answer loss; its parameter groups are what stages may train (the pretrained tower never)."""

    def __init__(self, model: MultimodalGPT, lora: LoRAWeights | None) -> None:
        super().__init__()
        self.model, self.lora = model, lora

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        groups = module_groups(self.model)
        if self.model.config.vision_tower == PRETRAINED_TOWER:
            groups.pop("vision_encoder", None)
        if self.lora is not None:  # the frozen decoder is in no group: never in AdamW
            groups.pop("language_model", None)
            groups["lora"] = lora_parameters(self.model.language_model)
        return groups

    def forward(self, **batch: Tensor) -> Tensor:
        return self.model(**batch).loss


def pretrained_parts(spec: LlavaModelSpec) -> tuple[Any, Any, str]:
    """(decoder GPT, its tokenizer with the template kept, chat template) of ``model.decoder``."""
    from omnigpt.checkpoints.gguf_tokenizer import GGUFTokenizer
    from omnigpt.checkpoints.registry import load
    from omnigpt.models.gpt import GPT

    base, tok, template = load(spec.decoder)[:3]
    if not isinstance(base, GPT) or not template:
        raise ValueError(f"model.decoder {spec.decoder}: a chat language model with a chat template is needed, got "
                         f"{type(base).__name__}{'' if template else ' without a template'}")
    if not isinstance(tok, GGUFTokenizer):  # keep the template and eos in the checkpoints this run writes
        tok = GGUFTokenizer(tok.backend, eos_token_id=tok.eos_token_id, chat_template=template)
    return base, tok, template


def load_tower_weights(model: MultimodalGPT) -> None:
    """The pinned ImageNet MobileNetV2 weights into the model's tower (strict: every key)."""
    from omnigpt.checkpoints.registry import from_pretrained

    model.vision_encoder.encoder.model.load_state_dict(from_pretrained(PRETRAINED_TOWER).model.state_dict())


class LlavaTask(Task):
    name = "llava"
    data_spec, model_spec = LlavaDataSpec, LlavaModelSpec
    unused_parameters = True

    @classmethod
    def check_recipe(cls, r: Any) -> None:
        check_sources(r)
        m = r.model
        if (m.decoder is None) == (m.text is None):
            raise RecipeError("model: give exactly one of model.decoder (a pretrained chat model, e.g. "
                              "smollm2-135m-instruct) and model.text (a GPT preset from scratch)")
        if m.lora is not None and m.decoder is None:
            raise RecipeError("model.lora: adapters need a pretrained decoder (model.decoder)")
        if m.vision != PRETRAINED_TOWER:
            from omnigpt.models.vision import VisionConfig

            try:
                VisionConfig.from_name(m.vision)
            except ValueError as e:
                raise RecipeError(f"model.vision: {e} (or {PRETRAINED_TOWER!r}, the pretrained tower)") from None
        if m.text is not None:
            model_config(m.text, 256)
        if r.data.recall_items < 2:
            raise RecipeError(f"data.recall_items: at least 2 images to rank, got {r.data.recall_items}")
        check_stage_modules(r, module_names(m), owner="model")

    @classmethod
    def prepare(cls, r: Any) -> None:
        from omnigpt.data.multimodal import ensure_prepared

        for d in dict.fromkeys(s.dir for s in [*r.data.train, *r.data.eval]):
            options = dict(r.data.prepare.get(d, {}))
            ensure_prepared(d, options.pop("recipe", None), **options)

    def __init__(self, r: Any) -> None:
        super().__init__(r)
        d, m = r.data, r.model
        self.pools = [caption_conversations(s, True, d.question, d.with_questions) for s in d.train]
        vision = vision_config(m)
        projector = ProjectorConfig(m.projector, m.vision_merge)
        if m.decoder is not None:
            base, tok, template = pretrained_parts(m)
            eos = tok.id_to_token(tok.eos_token_id)
            proc_cfg = {"markers": False, "eos_token": eos, "pad_token": None}
            probe = ChatProcessor(tok, ProcessorConfig(**proc_cfg), template, m.system)  # registers the tokens
            self.config = MultimodalConfig(name="llava", text=base.config, vision_projector=projector,
                                           image_token_id=probe.image_token_id,
                                           added_tokens=max(0, len(tok) - base.config.vocab_size), **vision)
            self.processor: Processor = ChatProcessor(tok, ProcessorConfig(**self.config.processor_kwargs(),
                                                                           **proc_cfg), template, m.system)
            self.model = MultimodalGPT(self.config, base.train())  # the pretrained decoder itself, tied head kept
            base.requires_grad_(False)
            self.with_lora(base, m.lora, "language_model.")  # the projector (and tower) load from checkpoints
        else:
            texts = [t["value"] for pool in self.pools for c in pool for t in c["conversations"]]
            tok = build_tokenizer(r, texts)
            probe = Processor(tok)
            self.config = MultimodalConfig(name="llava-scratch", text=model_config(m.text, len(tok)),
                                           vision_projector=projector, image_token_id=probe.image_token_id,
                                           **vision)
            self.processor = Processor(tok, ProcessorConfig(**self.config.processor_kwargs()))
            self.model = MultimodalGPT(self.config)
        if self.config.vision_tower == PRETRAINED_TOWER:
            load_tower_weights(self.model)
            self.model.vision_encoder.requires_grad_(False)
        self.preprocessor = self.processor
        self.pad = self.processor.ids[self.processor.config.pad_token or self.processor.config.eos_token]
        sample = [to_example(c, self.processor, True) for c in self.pools[0][:: max(1, len(self.pools[0]) // 16)]]
        self.tokens_per_step = round(r.batch_size * sum(len(e.input_ids) for e in sample) / len(sample))
        self._eval: list[Any] | None = None

    def train_module(self) -> nn.Module:
        return LlavaLoss(self.model, self.lora)

    def batch(self, step: int, start: int, count: int) -> dict[str, Tensor]:
        r = self.r
        rows = mixture_indices([len(p) for p in self.pools], [s.weight for s in r.data.train], r.batch_size,
                               r.seed, step)
        return collate([to_example(self.pools[s][i], self.processor, True) for s, i in rows[start : start + count]],
                       self.pad)

    @torch.no_grad()
    def evaluate(self, limit: int | None, dtype: torch.dtype | None, loss_module: nn.Module | None,
                 ) -> dict[str, Any]:
        """Teacher-forced caption loss on the first ``limit`` held-out images of each ``data.eval`` source (all
        when None); the generated captions are scored by ``omnigpt eval``."""
        if self._eval is None:
            self._eval = [[to_example(c, self.processor, True) for c in
                           caption_conversations(s, False, self.r.data.question, with_questions=False)]
                          for s in self.r.data.eval or self.r.data.train[:1]]
        dev = next(self.model.parameters()).device
        total, n = 0.0, 0
        for examples in self._eval:
            for i in range(0, len(examples[:limit]), 16):
                b = collate(examples[:limit][i : i + 16], self.pad)
                total += float(self.model(**{k: v.to(dev) for k, v in b.items()}).loss) * len(b["input_ids"])
                n += len(b["input_ids"])
        return {"val_loss": total / max(n, 1)}

    @classmethod
    def evaluate_run(cls, checkpoint: Path, out: Path, limit: int | None = None) -> dict[str, Any]:
        from omnigpt.apps.llava.evaluate import evaluate_captions_run

        return evaluate_captions_run(checkpoint, out, limit)


__all__ = ["LlavaDataSpec", "LlavaLoss", "LlavaModelSpec", "LlavaTask", "module_names"]
