"""Attention made visible: the reference path's softmax(QKᵀ/√d_k) weights, head summaries and heat maps.

The weights come from running the model with ``models.gpt.attention_reference`` (the formula written out) in place
of each layer's SDPA call, which hands over the matrix that multiplied V — the tests check that it reproduces the
fused path's attention output. Head summaries (Olsson et al. 2022,
"In-context learning and induction heads"; Clark et al. 2019, "What does BERT look at?"):

* entropy — mean over queries of −Σ_j p_ij·ln p_ij (nats); 0 = one key, ln(i+1) = uniform over the past;
* mean distance — mean over queries of Σ_j p_ij·(i − j), in tokens;
* previous-token score — mean over queries i ≥ 1 of p_i,i−1;
* induction score — on n random tokens repeated twice, the mean weight a query in the second copy puts on the
  token *after* the earlier occurrence of its own token (p_i,i−n+1): the pattern that lets a model continue a
  sequence it has seen before.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from omnigpt.models.gpt import GPT, attention_reference
from omnigpt.train.task import evaluating


@torch.no_grad()
def attention_weights(model: GPT, ids: Sequence[int] | Tensor) -> list[Tensor]:
    """Each layer's attention weights (nh, T, T) for one sequence of token ids, on the reference path, fp32."""
    with evaluating(model):
        x = torch.as_tensor(ids, dtype=torch.long).view(1, -1)
        weights: list[Tensor] = []
        layers = [block.attn for block in model.transformer.h]
        saved = [attn.sdpa for attn in layers]
        for attn in layers:  # the reference in place of SDPA (same arguments), handing over each layer's weights
            attn.sdpa = functools.partial(attention_reference, weights=weights)
        try:
            model(x.to(model.lm_head.weight.device))
        finally:
            for attn, sdpa in zip(layers, saved, strict=True):
                attn.sdpa = sdpa
    return [w[0].float().cpu() for w in weights]


def head_summaries(att: Tensor) -> dict[str, Tensor]:
    """Entropy, mean distance and previous-token score per head of one layer's weights (nh, T, T) → each (nh,)."""
    nh, T, _ = att.shape
    p = att.clamp_min(0)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1).mean(-1)  # (nh,)
    dist = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).clamp_min(0).float()  # (T, T): i − j
    mean_distance = (p * dist).sum(-1).mean(-1)
    prev = torch.diagonal(p, offset=-1, dim1=-2, dim2=-1).mean(-1) if T > 1 else torch.zeros(nh)
    return {"entropy": entropy, "mean_distance": mean_distance, "previous_token": prev}


@torch.no_grad()
def induction_scores(model: GPT, vocab: int, n: int, sequences: int = 8, seed: int = 0) -> list[Tensor]:
    """Per layer (nh,): mean p_i,i−n+1 over queries i in [n, 2n) of random sequences R‖R, |R| = n."""
    g = torch.Generator().manual_seed(seed)
    scores: list[Tensor] | None = None
    for _ in range(sequences):
        r = torch.randint(0, vocab, (n,), generator=g)
        att = attention_weights(model, torch.cat([r, r]))
        q = torch.arange(n, 2 * n)
        layer = [a[:, q, q - n + 1].mean(-1) for a in att]  # (nh,) each
        scores = layer if scores is None else [s + x for s, x in zip(scores, layer, strict=True)]
    assert scores is not None
    return [s / sequences for s in scores]


def plot_layer(att: Tensor, labels: Sequence[str], path: Path, title: str) -> None:
    """One PNG: a heat map per head of one layer's weights (nh, T, T), queries down, keys across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nh, T, _ = att.shape
    cols = min(nh, 4)
    rows = (nh + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.6 * rows + 0.4), dpi=100, squeeze=False)
    for h in range(rows * cols):
        ax = axes[h // cols][h % cols]
        if h >= nh:
            ax.axis("off")
            continue
        ax.imshow(att[h].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(f"head {h}", fontsize=9)
        ticks = range(0, T, max(1, T // 16))
        ax.set_xticks(list(ticks), [labels[i] for i in ticks], rotation=90, fontsize=6)
        ax.set_yticks(list(ticks), [labels[i] for i in ticks], fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def analyse(model: GPT, ids: Sequence[int], labels: Sequence[str], out_dir: Path, name: str,
            induction_n: int) -> list[dict[str, Any]]:
    """Heat maps ``out_dir/{name}_layer{i}.png`` for the text ``ids`` and one summary row per head."""
    out_dir.mkdir(parents=True, exist_ok=True)
    att = attention_weights(model, ids)
    induction = induction_scores(model, model.config.vocab_size, induction_n)
    rows = []
    for i, a in enumerate(att):
        window = model.config.layer_window(i)
        kind = f"banded, window {window}" if window else "dense"
        plot_layer(a, labels, out_dir / f"{name}_layer{i}.png", f"{name}: layer {i} ({kind}), softmax(QKᵀ/√d_k)")
        s = head_summaries(a)
        for h in range(a.shape[0]):
            rows.append({"model": name, "layer": i, "head": h, "window": window,
                         **{k: round(float(v[h]), 4) for k, v in s.items()},
                         "induction": round(float(induction[i][h]), 4)})
    return rows


__all__ = ["analyse", "attention_weights", "head_summaries", "induction_scores", "plot_layer"]
