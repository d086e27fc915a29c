"""Training and evaluating multimodal models: staged schedules, per-module learning rates, task metrics.

The pieces ``omnigpt train`` needs for multimodal recipes, written as plain functions over any model whose
forward returns ``.loss`` (``MultimodalGPT``, ``ContrastiveModel``):

* ``Stage`` — one phase of a staged schedule (LLaVA-1.5: stage 1 trains only the projector to align the frozen
  encoders with the decoder, stage 2 trains everything). Each stage names the modules it trains, its peak
  learning rate, per-module learning-rate multipliers, warmup and cosine decay.
* ``build_optimizer`` — AdamW with one parameter group per module (× decay / no-decay), so per-module learning
  rates are ordinary param-group ``lr`` values; frozen modules are left out and get ``requires_grad_(False)``.
* ``fit`` — the loop: batches from a callable ``batch(step)`` (a pure function of the step, as the text
  trainer's sampler is, so runs are reproducible), bf16 autocast optional, grad clipping, non-finite steps
  skipped, an optional wall-clock budget.
* Evaluation: zero-shot accuracy and retrieval recall@k for contrastive models; transcription / captioning
  through the KV-cache generator (``generate.generate`` with ``inputs_embeds``) scored by WER, exact match and
  BLEU (``metrics``).

References: LLaVA-1.5 (two-stage schedule, projector-only alignment), open_clip (per-module learning rates,
``training/train.py``), nanoVLM (``train.py``: separate learning rates for the modality projector and backbones).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from omnigpt.train import metrics

# ------------------------------------------------------------------------------------------------------------
# Schedules and optimizers


@dataclass(frozen=True)
class Stage:
    """One phase of a staged schedule. ``train``: module names trained (None = every module)."""

    name: str
    steps: int
    lr: float = 1e-3
    train: tuple[str, ...] | None = None
    lr_scale: dict[str, float] = field(default_factory=dict)  # module → multiplier of ``lr``
    warmup: int = 0
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of the peak
    weight_decay: float = 0.05

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.lr < 0 or self.warmup < 0:
            raise ValueError(f"stage {self.name!r}: steps must be positive, lr and warmup >= 0")

    def lr_multiplier(self, step: int, progress: float | None = None) -> float:
        """Linear warmup over ``warmup`` steps, then cosine from 1 to ``min_lr_ratio`` at the last step.

        ``progress`` (0–1) overrides the step-based position in the cosine: ``fit`` passes the elapsed share of a
        wall-clock budget, so a time-limited run still ends its schedule at the floor."""
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        if progress is None:
            progress = (step - self.warmup) / max(self.steps - self.warmup, 1)
        progress = min(max(progress, 0.0), 1.0)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def module_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters by module: ``model.parameter_groups()`` when the model defines it, else its direct children
    (parameters held by the model itself, e.g. CLIP's ``logit_scale``, go under their own names)."""
    if hasattr(model, "parameter_groups"):
        return dict(model.parameter_groups())
    groups: dict[str, list[nn.Parameter]] = {}
    for name, child in model.named_children():
        params = list(child.parameters())
        if params:
            groups[name] = params
    for name, p in model.named_parameters(recurse=False):
        groups[name] = [p]
    return groups


def build_optimizer(model: nn.Module, stage: Stage, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over the modules ``stage`` trains: per module one decayed group (matrices) and one not (biases,
    norms, scalars), each with its own ``lr`` (peak × the module's ``lr_scale``) remembered as ``base_lr``."""
    groups = module_groups(model)
    if stage.train is not None and (unknown := sorted(set(stage.train) - set(groups))):
        raise ValueError(f"stage {stage.name!r} trains unknown modules {unknown}; known: {sorted(groups)}")
    if unknown := sorted(set(stage.lr_scale) - set(groups)):
        raise ValueError(f"stage {stage.name!r}: lr_scale for unknown modules {unknown}; known: {sorted(groups)}")
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
    return torch.optim.AdamW(param_groups, betas=(0.9, 0.98), fused=fused)


def fit(model: nn.Module, stages: Sequence[Stage], batch: Callable[[int], dict[str, Tensor]],
        loss_fn: Callable[[nn.Module, dict[str, Tensor]], Tensor] | None = None, *, grad_clip: float = 1.0,
        dtype: torch.dtype | None = None, time_limit: float | None = None, log_every: int = 50,
        log: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run ``stages`` in order; ``batch(global_step)`` gives each step's inputs, ``loss_fn`` (default
    ``model(**batch).loss``) the loss. With ``time_limit`` (seconds) every stage gets a share of the budget
    proportional to its ``steps``, its cosine follows the elapsed share of that time when that is further along,
    and the run stops when the budget is spent. Returns the log."""
    loss_fn = loss_fn or (lambda m, b: m(**b).loss)
    device = next(model.parameters()).device
    history: list[dict[str, Any]] = []
    t0, global_step, running = time.perf_counter(), 0, []
    model.train()
    total_steps = sum(s.steps for s in stages)
    for stage in stages:
        opt = build_optimizer(model, stage)
        params = [p for g in opt.param_groups for p in g["params"]]
        t_stage = time.perf_counter()
        budget = None if time_limit is None else time_limit * stage.steps / total_steps
        for step in range(stage.steps):
            progress = None
            if budget is not None:
                used = time.perf_counter() - t_stage
                if used + used / max(step, 1) > budget:  # the next step (at the mean pace) would overrun
                    break
                progress = max((step - stage.warmup) / max(stage.steps - stage.warmup, 1), used / budget)
            mult = stage.lr_multiplier(step, progress)
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * mult
            b = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch(global_step).items()}
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = loss_fn(model, b)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
            if torch.isfinite(loss) and torch.isfinite(norm):  # a bad batch must not poison the AdamW moments
                opt.step()
            opt.zero_grad(set_to_none=True)
            running.append(float(loss.detach()))
            global_step += 1
            if global_step % log_every == 0 or step == stage.steps - 1:
                row = {"stage": stage.name, "step": global_step, "loss": sum(running) / len(running),
                       "lr": stage.lr * mult, "time": round(time.perf_counter() - t0, 2)}
                history.append(row)
                running = []
                if log is not None:
                    log(row)
        if running:  # the stage ended on its time budget between two log rows
            history.append({"stage": stage.name, "step": global_step, "loss": sum(running) / len(running),
                            "lr": stage.lr * mult, "time": round(time.perf_counter() - t0, 2)})
            running = []
    for p in model.parameters():
        p.requires_grad_(True)
    return history


# ------------------------------------------------------------------------------------------------------------
# Batching helpers


def class_balanced_batch(labels: Tensor, classes_per_batch: int, per_class: int, generator: torch.Generator,
                         ) -> Tensor:
    """Indices of a batch with ``per_class`` items from each of ``classes_per_batch`` random classes.

    FACTS.md: CLIP on class-labelled data stalls on duplicate-class "negatives"; with balanced batches and
    multi-positive targets (``clip_loss(group_ids=…)``) every batch holds the same, known structure."""
    classes = labels.unique()
    chosen = classes[torch.randperm(len(classes), generator=generator)[:classes_per_batch]]
    out = []
    for c in chosen:
        idx = (labels == c).nonzero().flatten()
        out.append(idx[torch.randint(len(idx), (per_class,), generator=generator)])
    return torch.cat(out)


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_length: int, eos_id: int | None = None,
                   ) -> tuple[Tensor, Tensor]:
    """Right-padded (ids, attention_mask) of plain texts, each cut to ``max_length`` (eos appended if given)."""
    rows = [(tokenizer.encode(t) + ([eos_id] if eos_id is not None else []))[:max_length] for t in texts]
    T = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), T, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def spec_augment(features: Tensor, generator: torch.Generator, freq_masks: int = 2, freq_width: int = 8,
                 time_masks: int = 2, time_width: int = 10, gain: float = 0.25) -> Tensor:
    """SpecAugment (Park et al. 2019) on log-mel batches (N, n_mels, T): random frequency and time bands set to
    each clip's mean, plus a random level shift (log10 units / 4, as the Whisper scaling has it)."""
    x = features.clone()
    N, M, T = x.shape
    fill = x.mean(dim=(1, 2), keepdim=True)
    for _ in range(freq_masks):
        w = torch.randint(0, freq_width + 1, (N, 1, 1), generator=generator)
        f0 = (torch.rand(N, 1, 1, generator=generator) * (M - w)).long()
        band = (torch.arange(M)[None, :, None] >= f0) & (torch.arange(M)[None, :, None] < f0 + w)
        x = torch.where(band, fill, x)
    for _ in range(time_masks):
        w = torch.randint(0, time_width + 1, (N, 1, 1), generator=generator)
        t0 = (torch.rand(N, 1, 1, generator=generator) * (T - w)).long()
        band = (torch.arange(T)[None, None, :] >= t0) & (torch.arange(T)[None, None, :] < t0 + w)
        x = torch.where(band, fill, x)
    return x + (torch.rand(N, 1, 1, generator=generator) - 0.5) * 2 * gain


# ------------------------------------------------------------------------------------------------------------
# Evaluation


@torch.no_grad()
def embed_in_batches(fn: Callable[[Tensor], Tensor], inputs: Tensor, batch_size: int = 256) -> Tensor:
    return torch.cat([fn(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


@torch.no_grad()
def zero_shot_accuracy(model: Any, tokenizer: Any, pixel_values: Tensor, labels: Tensor, class_names: Sequence[str],
                       templates: Sequence[str], max_length: int = 32, eos_id: int | None = None,
                       ) -> dict[str, float]:
    """CLIP zero-shot: class rows = mean embedding of the class's prompts; accuracy of argmax over classes."""
    from omnigpt.models.contrastive import zero_shot_classifier, zero_shot_predict

    model.eval()

    def encode(texts: list[str]) -> Tensor:
        ids, mask = tokenize_texts(tokenizer, texts, max_length, eos_id)
        return model.encode_text(ids, mask)

    classifier = zero_shot_classifier(encode, class_names, templates)
    image_emb = embed_in_batches(model.encode_image, pixel_values)
    pred = zero_shot_predict(image_emb, classifier)
    return {"accuracy": metrics.accuracy(pred.tolist(), labels.tolist())}


@torch.no_grad()
def retrieval_recall(model: Any, tokenizer: Any, pixel_values: Tensor, texts: Sequence[str],
                     ks: Sequence[int] = (1, 5, 10), max_length: int = 32, eos_id: int | None = None,
                     ) -> dict[str, float]:
    """Image→text and text→image recall@k over a gallery of paired items (pair i = image i, text i)."""
    model.eval()
    ids, mask = tokenize_texts(tokenizer, texts, max_length, eos_id)
    t = torch.cat([model.encode_text(ids[i : i + 256], mask[i : i + 256]) for i in range(0, len(ids), 256)])
    v = embed_in_batches(model.encode_image, pixel_values)
    sim = (v @ t.T).float().numpy()
    out = {f"image_to_text_r@{k}": r for k, r in metrics.recall_at_k(sim, ks=ks).items()}
    out |= {f"text_to_image_r@{k}": r for k, r in metrics.recall_at_k(sim.T, ks=ks).items()}
    return out


@torch.no_grad()
def generate_answers(model: Any, processor: Any, prompt: str, *, images: Sequence[Any] | None = None,
                     audio: Tensor | None = None, max_new_tokens: int = 24, batch_size: int = 64) -> list[str]:
    """Greedy answers of a ``MultimodalGPT`` to ``prompt`` (one placeholder) about each image / clip.

    ``audio`` may be precomputed features (N, n_mels, frames)."""
    n = len(images) if images is not None else len(audio)
    outs: list[str] = []
    for i in range(0, n, batch_size):
        chunk = range(i, min(n, i + batch_size))
        if images is not None:
            batch = processor([prompt] * len(chunk), images=[[images[j]] for j in chunk])
        else:  # features are given: the same prompt ids for every clip, no padding needed
            ids = torch.tensor([processor.encode_sample(prompt, 0, 1)] * len(chunk))
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                     "input_features": audio[chunk.start : chunk.stop]}
        outs += generate_batch(model, processor, batch, max_new_tokens)
    return outs


@torch.no_grad()
def generate_batch(model: Any, processor: Any, batch: dict[str, Tensor], max_new_tokens: int = 24) -> list[str]:
    """Greedy continuations of one processor batch (prompts left-padded when their lengths differ).

    Decoding runs through ``generate.generate`` with the fused prompt embeddings (KV cache), stopping at eos."""
    from omnigpt.generate.decode import generate

    model.eval()
    eos = processor.ids.get(processor.config.eos_token) if processor.config.eos_token else None
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    embeds = model.embed(batch["input_ids"], batch.get("pixel_values"), batch.get("input_features"))
    tokens: list[list[int]] = [[] for _ in range(len(batch["input_ids"]))]
    for step in generate(model.language_model, batch["input_ids"], inputs_embeds=embeds,
                         attention_mask=batch["attention_mask"], max_new_tokens=max_new_tokens, temperature=0,
                         stop_token_ids=[eos] if eos is not None else ()):
        for j, tok in enumerate(step.tokens):
            if tok is not None and tok != eos:
                tokens[j].append(tok)
    return [processor.tokenizer.decode(t) for t in tokens]


def text_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """The task metrics for generated text: WER, exact match (normalised) and corpus BLEU-4."""
    norm = [metrics.normalize_text(p) for p in predictions]
    refs = [metrics.normalize_text(r) for r in references]
    return {"wer": metrics.word_error_rate(norm, refs), "exact_match": metrics.exact_match(norm, refs),
            "bleu": metrics.corpus_bleu(norm, refs)}


class AudioCTC(nn.Module):
    """A ``MultimodalGPT`` plus an auxiliary CTC head on its audio encoder, for training only (the head is not
    saved). Graves et al. 2006; the hybrid CTC/attention recipe of ESPnet: the CTC loss reads the answer's tokens
    straight off the encoder output, an alignment-free signal from the first step, where a decoder trained from
    scratch ignores the audio tokens for hundreds of steps (FACTS.md: speech recognition at CPU budgets needs it).

    ``forward(ctc_targets, ctc_lengths, **batch)`` → the decoder's answer loss + ``weight`` × CTC; the targets are
    the answer ids of each clip, concatenated in clip order, blank = the last class."""

    def __init__(self, model: nn.Module, weight: float = 0.5) -> None:
        super().__init__()
        self.model, self.weight = model, weight
        self.ctc_head = nn.Linear(model.config.audio.n_embd, model.config.text.vocab_size + 1)  # + blank
        self._encoded: list[Tensor] = []
        # Capture the encoder output of the decoder's own forward pass: the audio is encoded once, not twice.
        model.audio_encoder.register_forward_hook(lambda m, args, out: self._encoded.append(out.last_hidden_state))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {**self.model.parameter_groups(), "ctc_head": list(self.ctc_head.parameters())}

    def forward(self, ctc_targets: Tensor | None = None, ctc_lengths: Tensor | None = None,
                **batch: Tensor) -> Tensor:
        self._encoded.clear()
        # Losses of frozen parts are skipped: a stage that trains only the audio encoder + CTC head (the staged
        # speech schedule's first) runs the encoder alone and does not pay for the decoder's forward pass.
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


def lm_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Answer-only next-token loss of a ``MultimodalGPT`` batch (labels from the processor)."""
    return model(**batch).loss


def contrastive_loss(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    return model(**batch).loss


__all__ = ["AudioCTC", "Stage", "build_optimizer", "class_balanced_batch", "contrastive_loss", "embed_in_batches",
           "fit", "generate_answers", "generate_batch", "lm_loss", "module_groups", "retrieval_recall", "spec_augment",
           "text_scores", "tokenize_texts", "zero_shot_accuracy"]
