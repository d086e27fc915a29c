"""The ``multimodal`` task: a ``MultimodalGPT`` answering about images and audio (LLaVA-style conversations).

Data: prepared directories (``omnigpt prepare-mm``) listed in ``data.train`` with weights; every conversation is
preprocessed once (token ids with answer-only labels, image / log-mel tensors), and each row of a batch draws its
source by weight and an item uniformly (``data.batches.mixture_indices``), so image questions and speech
transcription share batches and one decoder. With ``model.ctc_weight`` > 0 an auxiliary CTC head on the audio
encoder (``AudioCTC``) trains alongside and is not saved. Evaluation: the answer loss on ``data.eval`` during
training; at the end (and in ``omnigpt eval``) generated answers (greedy, KV cache) scored by exact match — the
accuracy of one-word answers such as class names — BLEU and WER.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from omnigpt.apps.common import metrics
from omnigpt.apps.common.multimodal import build_tokenizer, check_model_stages, check_sources
from omnigpt.checkpoints.state import saved_recipe
from omnigpt.data.batches import collate, mixture_indices, read_source, spec_augment, to_example
from omnigpt.generate.multimodal import generate_answers
from omnigpt.models.multimodal import MultimodalGPT
from omnigpt.text.processors import Processor, ProcessorConfig
from omnigpt.train.recipe import MMDataSpec, MMModelSpec, MMSource, RecipeError, multimodal_config
from omnigpt.train.schedule import module_groups
from omnigpt.train.task import LossOf, Task


class AudioCTC(nn.Module):
    """A ``MultimodalGPT`` plus an auxiliary CTC head on its audio encoder, for training only (the head is not
    saved). Graves et al. 2006; the hybrid CTC/attention recipe of ESPnet: the CTC loss reads the answer's tokens
    straight off the encoder output, an alignment-free signal from the first step, where a decoder trained from
    scratch ignores the audio tokens for hundreds of steps.

    ``forward(ctc_targets, ctc_lengths, **batch)`` → the decoder's answer loss + ``weight`` × CTC; the targets are
    the answer ids of each clip, concatenated in clip order, blank = the last class."""

    def __init__(self, model: MultimodalGPT, weight: float = 0.5) -> None:
        super().__init__()
        self.model, self.weight = model, weight
        self.ctc_head = nn.Linear(model.config.audio.n_embd, model.config.text.vocab_size + 1)  # + blank
        self._encoded: list[Tensor] = []
        # Capture the encoder output of the decoder's own forward pass: the audio is encoded once, not twice.
        model.audio_encoder.register_forward_hook(lambda m, args, out: self._encoded.append(out.last_hidden_state))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {**module_groups(self.model), "ctc_head": list(self.ctc_head.parameters())}

    def forward(self, ctc_targets: Tensor | None = None, ctc_lengths: Tensor | None = None,
                **batch: Tensor) -> Tensor:
        self._encoded.clear()
        # A stage that trains only the audio encoder + CTC head runs the encoder alone (no decoder forward).
        if any(p.requires_grad for n, p in self.model.named_parameters() if not n.startswith("audio_encoder.")):
            loss = self.model(**batch).loss
        else:
            self.model.audio_encoder(batch["input_features"])
            loss = self._encoded[-1].new_zeros(())
        if ctc_targets is None or not self._encoded or self.weight == 0:
            return loss
        h = self._encoded[-1]  # (N_clips, T_enc, C)
        logp = self.ctc_head(h).float().log_softmax(-1).transpose(0, 1)  # (T_enc, N_clips, V + 1)
        lengths = torch.full((h.shape[0],), h.shape[1], dtype=torch.long, device=h.device)
        ctc = nn.functional.ctc_loss(logp, ctc_targets, lengths, ctc_lengths, blank=logp.shape[-1] - 1,
                                     zero_infinity=True)
        return loss + self.weight * ctc

    @torch.no_grad()
    def ctc_greedy(self, features: Tensor, tokenizer: Any) -> list[str]:
        """Best-path CTC transcripts (collapse repeats, drop blanks): the encoder's own reading of each clip."""
        self.eval()
        blank = self.ctc_head.out_features - 1
        best = self.ctc_head(self.model.audio_encoder(features).last_hidden_state).argmax(-1)  # (N, T)
        out = []
        for row in best.tolist():
            ids = [t for i, t in enumerate(row) if t != blank and (i == 0 or t != row[i - 1])]
            out.append(tokenizer.decode(ids))
        return out


def text_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """The task metrics for generated text: WER, exact match (normalised) and corpus BLEU-4."""
    norm = [metrics.normalize_text(p) for p in predictions]
    refs = [metrics.normalize_text(r) for r in references]
    return {"wer": metrics.word_error_rate(norm, refs), "exact_match": metrics.exact_match(norm, refs),
            "bleu_whitespace": metrics.bleu_whitespace(norm, refs)}


def answer_metrics(model: MultimodalGPT, processor: Any, sources: Sequence[MMSource], max_new_tokens: int = 24,
                   batch_size: int = 64) -> dict[str, Any]:
    """Generated answers on each source's held-out items, scored against the references (``SOURCE/metric``)."""
    pad = processor.ids[processor.config.pad_token or processor.config.eos_token]
    out: dict[str, Any] = {}
    for src in sources:
        examples = [to_example(c, processor, with_answer=False) for c in read_source(src, False, training=False)]
        preds: list[str] = []
        for i in range(0, len(examples), batch_size):
            preds += generate_answers(model, processor, collate(examples[i : i + batch_size], pad, left=True),
                                      max_new_tokens)
        scores = text_scores(preds, [e.answer for e in examples])
        out |= {f"{src.label}/{k}": round(v, 4) for k, v in scores.items()} | {f"{src.label}/n": len(preds)}
    return out


def recipe_eval_sources(ckpt: str | Path) -> list[MMSource]:
    """The ``data.eval`` sources of the recipe that trained ``ckpt`` (kept in its ``trainer_state/state.json``)."""
    recipe = saved_recipe(ckpt)
    sources = [MMSource(**s) for s in recipe.get("data", {}).get("eval", [])]
    if not sources:
        raise ValueError(f"{ckpt}: no recipe with data.eval sources is saved with it: pass --data DIR")
    return sources








class MultimodalTask(Task):
    name = "multimodal"
    data_spec, model_spec = MMDataSpec, MMModelSpec
    unused_parameters = True  # an image-only batch gives the audio encoder no gradient

    @classmethod
    def check_recipe(cls, r: Any) -> None:
        check_sources(r)
        if not (r.model.vision or r.model.audio):
            raise RecipeError("model: a multimodal recipe needs model.vision and/or model.audio (encoder presets)")
        if r.model.ctc_weight < 0 or (r.model.ctc_weight > 0 and not r.model.audio):
            raise RecipeError(f"model.ctc_weight: must be >= 0, and > 0 only with an audio encoder "
                              f"(got {r.model.ctc_weight})")
        model = MultimodalGPT(multimodal_config(r.model))  # built on the CPU once, to ask it its module names
        check_model_stages(r, AudioCTC(model, r.model.ctc_weight) if r.model.ctc_weight > 0 else model)

    def __init__(self, r: Any) -> None:
        super().__init__(r)
        raw = [read_source(s, False, training=True) for s in r.data.train]
        tok = build_tokenizer(r, [t["value"] for items in raw for c in items for t in c["conversations"]])
        probe = Processor(tok)  # registers the multimodal special tokens: their ids go into the model config
        self.config = multimodal_config(r.model, len(tok), probe.image_token_id, probe.audio_token_id)
        self.model = MultimodalGPT(self.config)
        self.preprocessor = self.processor = Processor(
            tok, ProcessorConfig(**self.config.processor_kwargs(), truncate_audio=r.model.truncate_audio))
        self.pools = [[to_example(c, self.processor, with_answer=True) for c in items] for items in raw]
        self.pad = self.processor.ids[self.processor.config.pad_token or self.processor.config.eos_token]
        mean_len = sum(len(e.input_ids) for p in self.pools for e in p) / sum(map(len, self.pools))
        self.tokens_per_step = round(r.batch_size * mean_len)
        self._eval_examples: dict[str, list[Any]] = {}

    def train_module(self) -> nn.Module:
        w = self.r.model.ctc_weight
        return AudioCTC(self.model, w) if w > 0 else LossOf(self.model)

    def batch(self, step: int, start: int, count: int) -> dict[str, Tensor]:
        r = self.r
        rows = mixture_indices([len(p) for p in self.pools], [s.weight for s in r.data.train], r.batch_size,
                               r.seed, step)
        examples = [self.pools[s][i] for s, i in rows[start : start + count]]
        b = collate(examples, self.pad)
        if r.model.ctc_weight > 0 and "input_features" in b:  # AudioCTC's targets: each clip's answer, no eos
            answers = [e.labels[(e.labels != -100)][:-1] for e in examples if e.input_features is not None]
            if len(answers) != len(b["input_features"]):
                raise ValueError("model.ctc_weight needs one audio clip per conversation")
            b["ctc_targets"], b["ctc_lengths"] = torch.cat(answers), torch.tensor([len(a) for a in answers])
        if r.data.spec_augment and "input_features" in b:
            # Seeded per (step, row of the global batch, clip within the row): the same masks for any split into
            # micro-batches and ranks. Clips are concatenated in row order (collate).
            seeds = [((r.seed * 1_000_003 + step) * 4096 + start + j) * 64 + c
                     for j, e in enumerate(examples) for c in range(0 if e.input_features is None
                                                                    else len(e.input_features))]
            b["input_features"] = torch.cat([spec_augment(f[None], torch.Generator().manual_seed(seed))
                                             for seed, f in zip(seeds, b["input_features"], strict=True)])
        return b

    @torch.no_grad()
    def evaluate(self, limit: int | None, dtype: torch.dtype | None, loss_module: nn.Module | None,
                 ) -> dict[str, Any]:
        """Teacher-forced answer loss on the first ``limit`` items of every ``data.eval`` source; with
        ``limit=None`` on all of them, plus the generated answers' scores."""
        sources = self.r.data.eval or self.r.data.train[:1]
        total, n = 0.0, 0
        for src in sources:
            if src.label not in self._eval_examples:
                self._eval_examples[src.label] = [to_example(c, self.processor, with_answer=True)
                                                  for c in read_source(src, False, training=not self.r.data.eval)]
            examples = self._eval_examples[src.label][:limit]
            for i in range(0, len(examples), 64):
                b = collate(examples[i : i + 64], self.pad)
                dev = next(self.model.parameters()).device
                total += float(self.model(**{k: v.to(dev) for k, v in b.items()}).loss) * len(b["input_ids"])
                n += len(b["input_ids"])
        out: dict[str, Any] = {"val_loss": total / max(n, 1)}
        if limit is None and self.r.data.eval:
            out |= answer_metrics(self.model, self.processor, self.r.data.eval, self.r.data.max_new_tokens)
        return out


__all__ = ["AudioCTC", "MultimodalTask", "answer_metrics", "recipe_eval_sources", "text_scores"]
