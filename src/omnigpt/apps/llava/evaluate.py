"""``omnigpt eval`` of a ``llava`` run: captions of held-out images, scored, ranked, and set against baselines.

For every held-out image of the recipe's ``data.eval`` sources (images whose captions never appear in training: the
prepared splits hold out by a hash of the caption) the model answers the caption question ("What is in this
picture?") greedily; the answers are scored against the captions with corpus BLEU-4 (``metrics.bleu_whitespace`` on
normalised text) and ROUGE-L F1 (``rouge-score``), overall and per source.

Image→text recall@k: ``data.recall_items`` images spread over the held-out set, each ranking the distinct captions
of those images by the model's mean log-probability per caption token (the end-of-turn token included) after the
image prompt — the generative-model form of retrieval. The prompt is run once per image; its KV cache is copied
to one row per candidate.

Baselines, measured in the same call on the same images:

* ``most_frequent_caption`` — every image gets the commonest training caption (caption-independent);
* ``nearest_neighbour_caption`` — the caption of the training image nearest in pooled ImageNet MobileNetV2
  features (cosine), the retrieval baseline of captioning papers;
* ``blind`` — recall@k of the same model ranking the captions with no image in the prompt (its caption prior);
  ``chance`` — k / candidates.

``samples.md`` lists the first images with their caption, the model's answer and the nearest-neighbour caption.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from omnigpt.apps.common import metrics
from omnigpt.apps.llava.data import caption_conversations
from omnigpt.checkpoints.state import saved_recipe
from omnigpt.data.batches import Example, collate, to_example
from omnigpt.kernels.precision import autocast
from omnigpt.text.chat_processor import load_processor

NN_TRAIN_PER_SOURCE = 1500  # training images per source whose features the nearest-neighbour baseline searches


def pick(items: list[Any], n: int) -> list[Any]:
    """``n`` items spread evenly over ``items`` (all when there are fewer)."""
    return list(items) if n >= len(items) else [items[i * len(items) // n] for i in range(n)]


def caption_scores(predictions: list[str], references: list[str]) -> dict[str, float]:

    norm = [metrics.normalize_text(p) for p in predictions]
    refs = [metrics.normalize_text(r) for r in references]
    return {"bleu_whitespace": round(metrics.bleu_whitespace(norm, refs), 2),
            "rouge_l": round(metrics.rouge_scores(predictions, references)["rougeL"], 2),
            "exact_match": round(metrics.exact_match(norm, refs), 4)}


@torch.no_grad()
def generate_captions(model: Any, processor: Any, convs: list[dict[str, Any]], max_new_tokens: int,
                      batch_size: int = 16) -> list[str]:
    """Greedy answers to each conversation's question (prompts left-padded per batch)."""
    from omnigpt.generate.multimodal import generate_answers

    pad = processor.ids[processor.config.pad_token or processor.config.eos_token]
    out: list[str] = []
    for i in range(0, len(convs), batch_size):
        examples = [to_example(c, processor, with_answer=False) for c in convs[i : i + batch_size]]
        out += [a.strip() for a in generate_answers(model, processor, collate(examples, pad, left=True),
                                                      max_new_tokens)]
    return out


@torch.no_grad()
def candidate_scores(model: Any, prompt: Example, candidates: list[list[int]]) -> Tensor:
    """Mean log-probability per token of each candidate answer (ids ending with eos) after ``prompt``: (M,)."""
    from omnigpt.models.kv_cache import make_kv_cache

    lm = model.language_model
    dev = next(model.parameters()).device
    ids = prompt.input_ids[None].to(dev)  # (1, P)
    pixels = prompt.pixel_values.to(dev) if prompt.pixel_values is not None else None
    embeds = model.embed(ids, pixels)  # (1, P, C)
    M, L = len(candidates), max(len(c) for c in candidates)
    caches = make_kv_cache(lm.config, ids.shape[1] + L)
    first = lm(inputs_embeds=embeds, past_key_values=caches, logits_to_keep=1).logits[:, -1].float()
    first = first.log_softmax(-1)[0]  # (V,): the distribution of every candidate's first token
    for c in caches:
        c.reorder(torch.zeros(M, dtype=torch.long, device=dev))  # one copy of the prompt's keys per candidate
    cand = torch.full((M, L), candidates[0][-1], dtype=torch.long)
    lengths = torch.tensor([len(c) for c in candidates])
    for j, c in enumerate(candidates):
        cand[j, : len(c)] = torch.tensor(c)
    cand = cand.to(dev)
    logp = lm(input_ids=cand[:, :-1], past_key_values=caches).logits.float().log_softmax(-1)  # (M, L-1, V)
    tok = torch.cat([first[cand[:, :1]], logp.gather(-1, cand[:, 1:, None])[..., 0]], dim=1)  # (M, L)
    mask = torch.arange(L, device=dev)[None] < lengths.to(dev)[:, None]
    return (tok * mask).sum(1) / lengths.to(dev)


def recall(scores: Tensor, targets: list[int], ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """recall@k of (N, M) scores (``metrics.recall_at_k``), as ``recall@k`` keys rounded to 4 places."""
    return {f"recall@{k}": round(r, 4) for k, r in metrics.recall_at_k(scores.float().numpy(), targets, ks).items()}


def recall_eval(model: Any, processor: Any, convs: list[dict[str, Any]], question: str) -> dict[str, Any]:
    """recall@1/5 of the images of ``convs`` against their distinct captions, the blind ranking, and chance."""
    captions = list(dict.fromkeys(c["conversations"][-1]["value"] for c in convs))
    eos = processor.ids[processor.config.eos_token]
    cand = [processor.tokenizer.encode(t) + [eos] for t in captions]
    targets = [captions.index(c["conversations"][-1]["value"]) for c in convs]
    scores = torch.stack([candidate_scores(model, to_example(c, processor, False), cand).cpu() for c in convs])
    blind_conv = {"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": ""}],
                  "images": [], "audio": []}
    blind = candidate_scores(model, to_example(blind_conv, processor, False), cand).cpu()
    return {"items": len(convs), "candidates": len(captions), **recall(scores, targets),
            "blind": recall(blind[None].expand(len(convs), -1), targets),
            "chance": {f"recall@{k}": round(min(k, len(captions)) / len(captions), 4) for k in (1, 5)}}


@torch.no_grad()
def mobilenet_features(paths: list[Any], batch_size: int = 32) -> Tensor:
    """Unit-length pooled ImageNet MobileNetV2 features (N, 1280) of image files."""
    from omnigpt.checkpoints.registry import from_pretrained

    net, pre = from_pretrained("mobilenet-v2")[:2]
    feats = []
    for i in range(0, len(paths), batch_size):
        x = torch.cat([pre(p) for p in paths[i : i + batch_size]])
        feats.append(torch.nn.functional.normalize(net.eval().features_and_map(x)[0].float(), dim=-1))
    return torch.cat(feats)


def nearest_neighbour_captions(train: list[dict[str, Any]], test: list[dict[str, Any]]) -> list[str]:
    """The caption of each test image's nearest training image (cosine of MobileNetV2 features)."""
    bank = mobilenet_features([c["images"][0] for c in train])  # (N_train, 1280)
    query = mobilenet_features([c["images"][0] for c in test])  # (N_test, 1280)
    best = (query @ bank.T).argmax(1)  # (N_test,)
    return [train[int(i)]["conversations"][-1]["value"] for i in best]


def recipe_of(checkpoint: Path) -> dict[str, Any]:
    if not (recipe := saved_recipe(checkpoint)):
        raise ValueError(f"{checkpoint}: no trainer_state/state.json with the llava recipe that trained it")
    return recipe


def evaluate_captions_run(checkpoint: Path, out: Path, limit: int | None = None) -> dict[str, Any]:
    """The module docstring's evaluation of a saved ``llava`` checkpoint; ``limit`` caps the images per source."""
    from omnigpt.apps.common import figures
    from omnigpt.checkpoints.state import load_model
    from omnigpt.train.recipe import MMSource

    recipe = recipe_of(checkpoint)
    data = recipe["data"]
    question = data.get("question", "What is in this picture?")
    sources = [MMSource(**s) for s in data["eval"]]
    if limit is not None:
        sources = [dataclasses.replace(s, limit=limit) for s in sources]
    convs = {s.label: caption_conversations(s, False, question, with_questions=False) for s in sources}
    train = {s["dir"]: caption_conversations(MMSource(**s), True, question, with_questions=False)
             for s in data["train"]}
    model, processor = load_model(checkpoint).eval(), load_processor(checkpoint)
    items = [c for cs in convs.values() for c in cs]
    refs = [c["conversations"][-1]["value"] for c in items]
    t0 = time.perf_counter()
    with autocast():
        answers = generate_captions(model, processor, items, int(data.get("max_new_tokens", 16)))
        t_gen = time.perf_counter() - t0
        ranked = recall_eval(model, processor, pick(items, int(data.get("recall_items", 60))), question)
    result: dict[str, Any] = {"items": len(items), "question": question, **caption_scores(answers, refs),
                              "recall@1": ranked["recall@1"], "recall@5": ranked["recall@5"], "recall": ranked,
                              "per_source": {}, "seconds": {"generate": round(t_gen, 1),
                                                            "recall": round(time.perf_counter() - t0 - t_gen, 1)}}
    start = 0
    for label, cs in convs.items():
        sl = slice(start, start + len(cs))
        result["per_source"][label] = {"items": len(cs), **caption_scores(answers[sl], refs[sl])}
        start += len(cs)
    # Baselines on the same images.
    t0 = time.perf_counter()
    train_caps = [c for cs in train.values() for c in cs]
    common = collections.Counter(c["conversations"][-1]["value"] for c in train_caps).most_common(1)[0][0]
    bank = [c for cs in train.values() for c in pick(cs, NN_TRAIN_PER_SOURCE)]
    nn_caps = nearest_neighbour_captions(bank, items)
    result["baselines"] = {
        "most_frequent_caption": {"caption": common, **caption_scores([common] * len(items), refs)},
        "nearest_neighbour_caption": {"train_images": len(bank), **caption_scores(nn_caps, refs),
                                      "seconds": round(time.perf_counter() - t0, 1)},
        "blind": ranked["blind"], "chance": ranked["chance"]}
    rows = [{"image": str(c["images"][0]), "caption": r,
             "omnigpt": a, "nearest neighbour": n} for c, r, a, n in zip(items, refs, answers, nn_caps, strict=True)]
    figures.sample_table(pick(rows, 30), out / "samples.md")
    return result


__all__ = ["candidate_scores", "caption_scores", "evaluate_captions_run", "generate_captions",
           "nearest_neighbour_captions", "recall", "recall_eval"]
