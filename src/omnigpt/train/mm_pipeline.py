"""Multimodal recipes end to end: what ``omnigpt train`` runs for ``task: multimodal`` / ``contrastive`` recipes,
and what ``omnigpt eval`` reports for their checkpoints.

    prepared directories (``omnigpt prepare-mm``)  →  examples (Processor, once)  →  batches mixed by weight
    →  ``train_mm.fit`` over the recipe's stages  →  checkpoints/step_N/ (config.json + model.safetensors +
    tokenizer + processor_config.json + trainer_state/state.json)  →  ``evaluate_checkpoint``: metrics JSON

* ``multimodal`` — a ``MultimodalGPT`` on LLaVA-style conversations (``{split}.llava.json``). Every source is
  preprocessed once into token ids with answer-only labels plus its image / log-mel tensors; a batch draws each
  row's source by ``weight`` and an item uniformly, so image questions and speech transcription share batches
  and one decoder. Scored by generating answers (greedy, KV cache) against the references: exact match (the
  accuracy of one-word answers such as class names), BLEU and WER (``train_mm.text_scores``). With
  ``ctc_weight`` > 0 an auxiliary CTC head on the audio encoder (``train_mm.AudioCTC``) trains alongside and is
  dropped when saving.
* ``contrastive`` — an image–text ``ContrastiveModel`` (CLIP) on caption JSONL (``{split}.jsonl``); identical
  captions in a batch are positives of each other (``clip_loss(group_ids=…)``, FACTS.md: duplicate-class
  "negatives" stall CLIP on labelled data). Scored by zero-shot accuracy when records carry a ``label`` (each
  class's caption is its prompt) and by recall@k when captions are unique.

Reproducible: the model is initialised from ``seed`` and batch ``s`` is a pure function of (seed, s), as in the
text trainer. Resume is not supported here (runs are minutes long); a run directory with checkpoints is refused.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from omnigpt.data import multimodal as mm
from omnigpt.train.multimodal_lib import (
    AudioCTC,
    fit,
    generate_batch,
    retrieval_recall,
    spec_augment,
    text_scores,
    tokenize_texts,
    zero_shot_accuracy,
)
from omnigpt.train.recipe import MMSource, MultimodalRecipe, contrastive_config, multimodal_config, recipe_to_dict

EVAL_FILE = "eval.json"

# ------------------------------------------------------------------------------------------------------------
# Data: sources → examples → batches


def read_source(source: MMSource, captions: bool, training: bool) -> list[dict[str, Any]]:
    """The items of one source: conversations (or caption records), without the held-out ones when training and
    only those when evaluating with ``holdout`` > 0; then the first ``limit``."""
    d = Path(source.dir)
    path = d / (f"{source.split}.jsonl" if captions else f"{source.split}.llava.json")
    if not path.is_file():
        have = sorted(p.name for p in d.glob("*.json*")) if d.is_dir() else []
        raise FileNotFoundError(f"{path} not found (run `omnigpt prepare-mm` into {d}, or choose another split; "
                                f"the directory holds {have or 'nothing'})")
    items = mm.read_captions(path) if captions else mm.read_conversations(path)
    if source.holdout > 0:
        items = [it for it in items if mm.held_out(str(it["id"]), source.holdout) != training]
    items = items[: source.limit]
    if not items:
        raise ValueError(f"{path}: no items left (holdout {source.holdout}, limit {source.limit})")
    return items


def char_tokenizer(texts: Sequence[str]) -> Any:
    """Printable ASCII (newline included) + any other character of ``texts`` + ``<|endoftext|>``: free-text
    prompts encode, and the vocabulary is a few hundred ids at most, right for small decoders trained here."""
    from omnigpt.text.tokenizer import CharTokenizer

    chars = set(string.printable) - set("\t\r\x0b\x0c")
    chars.update(*texts)
    return CharTokenizer(sorted(chars), ["<|endoftext|>"])


@dataclass(frozen=True)
class Example:
    """One preprocessed conversation: prompt (+ answer) ids, answer-only labels, its media in placeholder order."""

    input_ids: Tensor  # (T,)
    labels: Tensor  # (T,): -100 on the prompt and placeholders
    pixel_values: Tensor | None  # (n_images, C, H, W)
    input_features: Tensor | None  # (n_clips, n_mels, frames)
    answer: str


def to_example(conv: dict[str, Any], processor: Any, with_answer: bool) -> Example:
    """Run the processor on one conversation (its last turn is the answer: ``mm.conversation_prompt``)."""
    prompt, answer = mm.conversation_prompt(conv)
    b = processor(prompt, images=conv["images"], audio=conv["audio"], answers=answer if with_answer else None)
    labels = b["labels"][0] if with_answer else torch.full_like(b["input_ids"][0], -100)
    return Example(b["input_ids"][0], labels, b.get("pixel_values"), b.get("input_features"), answer)


def collate(examples: Sequence[Example], pad_id: int, left: bool = False) -> dict[str, Tensor]:
    """Pad a list of examples into one batch (right for training, left for generation); media concatenated in
    row order, which is the order ``MultimodalGPT`` fills the placeholders in."""
    T = max(len(e.input_ids) for e in examples)
    B = len(examples)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    labels = torch.full((B, T), -100, dtype=torch.long)
    for i, e in enumerate(examples):
        sl = slice(T - len(e.input_ids), T) if left else slice(0, len(e.input_ids))
        ids[i, sl], mask[i, sl], labels[i, sl] = e.input_ids, 1, e.labels
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    for key in ("pixel_values", "input_features"):
        media = [getattr(e, key) for e in examples if getattr(e, key) is not None]
        if media:
            out[key] = torch.cat(media)  # (N, ...) over the batch's rows
    return out


def mixture_indices(sizes: Sequence[int], weights: Sequence[float], batch_size: int, seed: int, step: int,
                    ) -> list[tuple[int, int]]:
    """(source, item) of each row of batch ``step``: the source drawn by weight, the item uniformly — a pure
    function of (seed, step), so a rerun sees the same batches."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    src = torch.multinomial(torch.tensor(weights, dtype=torch.float64), batch_size, replacement=True, generator=g)
    item = (torch.rand(batch_size, generator=g, dtype=torch.float64) * torch.tensor(sizes)[src]).long()
    return list(zip(src.tolist(), item.tolist(), strict=True))


# ------------------------------------------------------------------------------------------------------------
# Training


def _device(name: str) -> torch.device:
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)


def _build_processor(tokenizer: Any, processor_kwargs: dict[str, Any], truncate_audio: bool) -> Any:
    from omnigpt.text.processors import Processor, ProcessorConfig

    return Processor(tokenizer, ProcessorConfig(**processor_kwargs, truncate_audio=truncate_audio))


def train_multimodal(r: MultimodalRecipe) -> dict[str, Any]:
    """Run a multimodal or contrastive recipe; returns a summary (steps, loss, wall time, checkpoint path)."""
    import time

    from omnigpt.checkpoints.io import atomic_directory
    from omnigpt.checkpoints.pretrained import write_pretrained
    from omnigpt.models.multimodal import image_processor_kwargs
    from omnigpt.text.gpt2_vocab import gpt2_tokenizer
    from omnigpt.text.processors import Processor

    t0 = time.perf_counter()
    if r.threads:
        torch.set_num_threads(r.threads)
    out = Path(r.out_dir)
    if any((out / "checkpoints").glob("step_*")):  # never silently mix two runs in one directory
        raise ValueError(f"{out} already has checkpoints: choose another out_dir (multimodal runs do not resume)")
    captions = r.task == "contrastive"
    raw = [read_source(s, captions, training=True) for s in r.data.train]
    if r.data.tokenizer == "gpt2":
        tok = gpt2_tokenizer()
    else:
        texts = [rec["text"] for items in raw for rec in items] if captions else \
            [t["value"] for items in raw for c in items for t in c["conversations"]]
        tok = char_tokenizer(texts)
    probe = Processor(tok)  # registers the multimodal special tokens: their ids go into the model config
    torch.manual_seed(r.seed)
    model: nn.Module
    if captions:
        from omnigpt.models.contrastive import ContrastiveModel

        config = contrastive_config(r.model, vocab_size=len(tok))
        model = ContrastiveModel(config)
        processor = _build_processor(tok, image_processor_kwargs(config.vision), r.model.truncate_audio)
        batch_fn = caption_batches(r, raw, processor, config.text.block_size)
    else:
        from omnigpt.models.multimodal import MultimodalGPT

        config = multimodal_config(r.model, len(tok), probe.image_token_id, probe.audio_token_id)
        model = MultimodalGPT(config)
        processor = _build_processor(tok, config.processor_kwargs(), r.model.truncate_audio)
        batch_fn = conversation_batches(r, raw, processor)
    trained: nn.Module = AudioCTC(model, r.ctc_weight) if r.ctc_weight > 0 else model
    trained.to(_device(r.device))
    print(f"{r.task}: {sum(p.numel() for p in model.parameters()):,} parameters, {sum(map(len, raw)):,} training "
          f"items from {len(raw)} source(s), data ready in {time.perf_counter() - t0:.0f} s", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(recipe_to_dict(r), indent=1) + "\n")
    metrics = out / "metrics.jsonl"
    metrics.unlink(missing_ok=True)  # a fresh run: an old curve belonged to an abandoned one

    def log(row: dict[str, Any]) -> None:
        with open(metrics, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    history = fit(trained, r.stages, batch_fn, loss_fn=(lambda m, b: m(**b)) if r.ctc_weight > 0 else None,
                  grad_clip=r.grad_clip,
                  dtype=torch.bfloat16 if r.dtype == "bfloat16" else None,
                  time_limit=None if r.max_minutes is None else 60 * r.max_minutes, log_every=r.log_interval, log=log)
    step = history[-1]["step"]
    train_s = time.perf_counter() - t0
    state = {"step": step, "task": r.task, "train_seconds": round(train_s, 1), "recipe": recipe_to_dict(r)}
    dest = out / "checkpoints" / f"step_{step:06d}"
    model.cpu()
    with atomic_directory(dest) as tmp:
        write_pretrained(model, tmp, processor)
        (tmp / "trainer_state").mkdir()
        (tmp / "trainer_state" / "state.json").write_text(json.dumps(state, indent=1) + "\n")
    return {"task": r.task, "step": step, "train_loss": history[-1]["loss"], "wall_time": round(train_s, 1),
            "checkpoint": str(dest)}


def conversation_batches(r: MultimodalRecipe, raw: list[list[dict[str, Any]]], processor: Any,
                         ) -> Callable[[int], dict[str, Tensor]]:
    """``batch(step)`` over the conversations of ``raw`` (one list per ``r.data.train`` source), each
    preprocessed once: rows mixed by source weight, answer-only labels, images and clips side by side."""
    pools = [[to_example(c, processor, with_answer=True) for c in items] for items in raw]
    pad = processor.ids[processor.config.pad_token or processor.config.eos_token]

    def batch(step: int) -> dict[str, Tensor]:
        rows = mixture_indices([len(p) for p in pools], [s.weight for s in r.data.train], r.batch_size, r.seed, step)
        examples = [pools[s][i] for s, i in rows]
        b = collate(examples, pad)
        if r.ctc_weight > 0 and "input_features" in b:  # AudioCTC's targets: each clip's answer, without eos
            answers = [e.labels[(e.labels != -100)][:-1] for e in examples if e.input_features is not None]
            if len(answers) != len(b["input_features"]):
                raise ValueError("ctc_weight needs one audio clip per conversation")
            b["ctc_targets"], b["ctc_lengths"] = torch.cat(answers), torch.tensor([len(a) for a in answers])
        if r.spec_augment and "input_features" in b:
            g = torch.Generator().manual_seed(r.seed * 1_000_003 + step + 1)
            b["input_features"] = spec_augment(b["input_features"], g)
        return b

    return batch


def caption_batches(r: MultimodalRecipe, raw: list[list[dict[str, Any]]], processor: Any, max_len: int,
                    ) -> Callable[[int], dict[str, Tensor]]:
    """``batch(step)`` of image–caption pairs for CLIP; ``group_ids`` marks rows with the same caption."""
    tok = processor.tokenizer
    eos = processor.ids[processor.config.eos_token]
    pools = []
    for items in raw:
        pixels = torch.stack([processor.image(rec["image"]) for rec in items])  # (N, C, H, W)
        ids, mask = tokenize_texts(tok, [rec["text"] for rec in items], max_len, eos)
        pools.append((pixels, ids, mask, [rec["text"] for rec in items]))
    caption_id: dict[str, int] = {}

    def batch(step: int) -> dict[str, Tensor]:
        rows = mixture_indices([len(p[0]) for p in pools], [s.weight for s in r.data.train], r.batch_size, r.seed,
                               step)
        pick = lambda k: [pools[s][k][i] for s, i in rows]  # noqa: E731
        ids, mask = torch.stack(pick(1)), torch.stack(pick(2))
        T = int(mask.sum(1).max())
        groups = torch.tensor([caption_id.setdefault(t, len(caption_id)) for t in pick(3)])
        return {"pixel_values": torch.stack(pick(0)), "input_ids": ids[:, :T], "attention_mask": mask[:, :T],
                "group_ids": groups}

    return batch


# ------------------------------------------------------------------------------------------------------------
# Evaluation


def read_recipe_sources(ckpt: str | Path) -> list[MMSource]:
    """The ``data.eval`` sources of the recipe that trained ``ckpt`` (kept in its ``trainer_state/state.json``)."""
    state = Path(ckpt) / "trainer_state" / "state.json"
    recipe = json.loads(state.read_text())["recipe"] if state.is_file() else {}
    sources = [MMSource(**s) for s in recipe.get("data", {}).get("eval", [])]
    if not sources:
        raise ValueError(f"{ckpt}: no recipe with data.eval sources is saved with it: pass --data DIR")
    return sources


def evaluate_checkpoint(ckpt: str | Path, sources: Sequence[MMSource] | None = None, max_new_tokens: int = 24,
                        batch_size: int = 64) -> dict[str, Any]:
    """Task metrics of a saved multimodal or contrastive model (kind from ``config.json``'s ``model_type``) on
    ``sources`` (default: the ``data.eval`` list of the recipe that trained it). Keys are ``SOURCE/metric``."""
    from omnigpt.checkpoints.pretrained import load_pretrained, read_config
    from omnigpt.text.processors import Processor

    ckpt = Path(ckpt)
    kind = read_config(ckpt).get("model_type")
    sources = read_recipe_sources(ckpt) if sources is None else sources
    processor = Processor.from_pretrained(ckpt)
    results: dict[str, Any] = {}
    if kind == "omnigpt-multimodal":

        model = load_pretrained(ckpt)
        pad = processor.ids[processor.config.pad_token or processor.config.eos_token]
        for src in sources:
            examples = [to_example(c, processor, with_answer=False) for c in read_source(src, False, training=False)]
            preds: list[str] = []
            for i in range(0, len(examples), batch_size):
                batch = collate(examples[i : i + batch_size], pad, left=True)
                del batch["labels"]
                preds += generate_batch(model, processor, batch, max_new_tokens)
            scores = text_scores(preds, [e.answer for e in examples])
            results |= {f"{src.label}/{k}": round(v, 4) for k, v in scores.items()} | {f"{src.label}/n": len(preds)}
    elif kind == "omnigpt-contrastive":

        model = load_pretrained(ckpt)
        eos = processor.ids[processor.config.eos_token]
        max_len = model.config.text.block_size
        for src in sources:
            recs = read_source(src, True, training=False)
            pixels = torch.stack([processor.image(rec["image"]) for rec in recs])
            texts = [rec["text"] for rec in recs]
            if all("label" in rec for rec in recs):  # zero-shot: each class's caption is its prompt
                prompt = {rec["label"]: rec["text"] for rec in recs}
                classes = sorted(prompt)
                labels = torch.tensor([classes.index(rec["label"]) for rec in recs])
                acc = zero_shot_accuracy(model, processor.tokenizer, pixels, labels, [prompt[c] for c in classes],
                                         ("{}",), max_len, eos)
                results[f"{src.label}/accuracy"] = round(acc["accuracy"], 4)
            if len(set(texts)) == len(texts):  # retrieval is defined when every caption names one item
                rec_k = retrieval_recall(model, processor.tokenizer, pixels, texts, (1, 5, 10), max_len, eos)
                results |= {f"{src.label}/{k}": round(v, 4) for k, v in rec_k.items()}
            results[f"{src.label}/n"] = len(recs)
    else:
        raise ValueError(f"{ckpt}: model_type {kind!r} is not a multimodal or contrastive model")
    return results


__all__ = ["EVAL_FILE", "Example", "caption_batches", "char_tokenizer", "collate", "conversation_batches",
           "evaluate_checkpoint", "mixture_indices", "read_recipe_sources", "read_source", "to_example",
           "train_multimodal"]
