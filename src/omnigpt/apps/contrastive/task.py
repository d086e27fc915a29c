"""The ``contrastive`` task: an image–text ``ContrastiveModel`` (CLIP) trained on caption records.

Data: prepared caption JSONL (``{split}.jsonl``) listed in ``data.train`` with weights; identical captions in a
batch are positives of each other (``clip_loss(group_ids=…)``): on class-labelled data, duplicate-class
"negatives" otherwise keep CLIP at chance for hundreds of steps. Evaluation: the CLIP loss on ``data.eval`` during
training; at the end (and in ``omnigpt eval``) zero-shot accuracy when records carry a ``label`` (each class's
caption is its prompt) and image↔text recall@k when captions are unique. Under DDP each process contrasts its
own micro-batch (no cross-process negatives), so a distributed run's loss is not the single-process loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from omnigpt.apps.common import metrics
from omnigpt.apps.common.multimodal import build_tokenizer, check_model_stages, check_sources
from omnigpt.data.batches import mixture_indices, read_source, tokenize_texts
from omnigpt.models.contrastive import ContrastiveModel, zero_shot_classifier, zero_shot_predict
from omnigpt.models.multimodal import image_processor_kwargs
from omnigpt.text.processors import Processor, ProcessorConfig
from omnigpt.train.recipe import MMDataSpec, MMModelSpec, MMSource, RecipeError, contrastive_config
from omnigpt.train.task import LossOf, Task


@torch.no_grad()
def embed_in_batches(fn: Callable[[Tensor], Tensor], inputs: Tensor, batch_size: int = 256) -> Tensor:
    return torch.cat([fn(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


@torch.no_grad()
def zero_shot_accuracy(model: Any, tokenizer: Any, pixel_values: Tensor, labels: Tensor, class_names: Sequence[str],
                       templates: Sequence[str], max_length: int = 32, eos_id: int | None = None,
                       ) -> dict[str, float]:
    """CLIP zero-shot: class rows = mean embedding of the class's prompts; accuracy of argmax over classes."""
    model.eval()

    def encode(texts: list[str]) -> Tensor:
        ids, mask = tokenize_texts(tokenizer, texts, max_length, eos_id)
        return model.encode_text(ids, mask)

    classifier = zero_shot_classifier(encode, class_names, templates)
    pred = zero_shot_predict(embed_in_batches(model.encode_image, pixel_values), classifier)
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


def retrieval_metrics(model: ContrastiveModel, processor: Any, sources: Sequence[MMSource]) -> dict[str, Any]:
    """Zero-shot accuracy and recall@k on each source's held-out items (``SOURCE/metric``)."""
    eos = processor.ids[processor.config.eos_token]
    max_len = model.config.text.block_size
    out: dict[str, Any] = {}
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
            out[f"{src.label}/accuracy"] = round(acc["accuracy"], 4)
        if len(set(texts)) == len(texts):  # retrieval is defined when every caption names one item
            rec_k = retrieval_recall(model, processor.tokenizer, pixels, texts, (1, 5, 10), max_len, eos)
            out |= {f"{src.label}/{k}": round(v, 4) for k, v in rec_k.items()}
        out[f"{src.label}/n"] = len(recs)
    return out


class ContrastiveTask(Task):
    name = "contrastive"
    data_spec, model_spec = MMDataSpec, MMModelSpec

    @classmethod
    def check_recipe(cls, r: Any) -> None:
        check_sources(r)
        if r.model.ctc_weight:
            raise RecipeError("model.ctc_weight: only multimodal recipes with an audio encoder have a CTC head")
        check_model_stages(r, ContrastiveModel(contrastive_config(r.model)))

    def __init__(self, r: Any) -> None:
        super().__init__(r)
        raw = [read_source(s, True, training=True) for s in r.data.train]
        tok = build_tokenizer(r, [rec["text"] for items in raw for rec in items])
        self.config = contrastive_config(r.model, vocab_size=len(tok))
        self.model = ContrastiveModel(self.config)
        self.preprocessor = self.processor = Processor(
            tok, ProcessorConfig(**image_processor_kwargs(self.config.vision)))
        self.max_len = self.config.text.block_size
        eos = self.processor.ids[self.processor.config.eos_token]
        self.pools = [self._pool(items, eos) for items in raw]
        self.caption_id: dict[str, int] = {}
        for items in raw:  # group ids fixed by first appearance in the data, not by batch order
            for rec in items:
                self.caption_id.setdefault(rec["text"], len(self.caption_id))
        self.tokens_per_step = r.batch_size
        self._eval: tuple[Tensor, ...] | None = None

    def _pool(self, items: list[dict[str, Any]], eos: int) -> tuple[Any, ...]:
        pixels = torch.stack([self.processor.image(rec["image"]) for rec in items])  # (N, C, H, W)
        ids, mask = tokenize_texts(self.processor.tokenizer, [rec["text"] for rec in items], self.max_len, eos)
        return pixels, ids, mask, [rec["text"] for rec in items]

    def train_module(self) -> nn.Module:
        return LossOf(self.model)

    def _rows(self, pools: list[tuple[Any, ...]], rows: list[tuple[int, int]]) -> dict[str, Tensor]:
        pick = lambda k: [pools[s][k][i] for s, i in rows]  # noqa: E731
        ids, mask = torch.stack(pick(1)), torch.stack(pick(2))
        T = int(mask.sum(1).max())
        groups = torch.tensor([self.caption_id.setdefault(t, len(self.caption_id)) for t in pick(3)])
        return {"pixel_values": torch.stack(pick(0)), "input_ids": ids[:, :T], "attention_mask": mask[:, :T],
                "group_ids": groups}

    def batch(self, step: int, start: int, count: int) -> dict[str, Tensor]:
        r = self.r
        rows = mixture_indices([len(p[0]) for p in self.pools], [s.weight for s in r.data.train], r.batch_size,
                               r.seed, step)
        return self._rows(self.pools, rows[start : start + count])

    @torch.no_grad()
    def evaluate(self, limit: int | None, dtype: torch.dtype | None, loss_module: nn.Module | None,
                 ) -> dict[str, Any]:
        """CLIP loss over batches of the first ``limit`` eval pairs; with ``limit=None`` also zero-shot accuracy
        and recall@k."""
        sources = self.r.data.eval or self.r.data.train[:1]
        eos = self.processor.ids[self.processor.config.eos_token]
        pools = [self._pool(read_source(s, True, training=not self.r.data.eval), eos) for s in sources]
        total, n, bs = 0.0, 0, self.r.batch_size
        dev = next(self.model.parameters()).device
        for si, pool in enumerate(pools):
            size = min(len(pool[0]), limit or len(pool[0]))
            for i in range(0, max(size - bs, 0) + 1, bs):  # whole batches (one short one for a small source)
                b = self._rows(pools, [(si, j) for j in range(i, min(i + bs, size))])
                total += float(self.model(**{k: v.to(dev) for k, v in b.items()}).loss)
                n += 1
        out: dict[str, Any] = {"val_loss": total / max(n, 1)}
        if limit is None and self.r.data.eval:
            out |= retrieval_metrics(self.model, self.processor, self.r.data.eval)
        return out


__all__ = ["ContrastiveTask", "retrieval_metrics", "retrieval_recall", "zero_shot_accuracy"]
