"""``omnigpt demo``: the main job. For now: build a GPT-2-small-shaped model, count it, run a forward pass."""

from __future__ import annotations

import argparse
import time

import torch

from omnigpt.config import GPTConfig
from omnigpt.models.gpt import GPT


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="gpt2", help="model preset to build (default: gpt2)")
    p.add_argument("--seq-len", type=int, default=64)


def run(args: argparse.Namespace) -> int:
    torch.manual_seed(0)
    config = GPTConfig.from_name(args.preset)
    model = GPT(config).eval()
    print(f"{config.name}: {model.num_params():,} parameters "
          f"({config.n_layer} layers, {config.n_head} heads, {config.n_embd} wide, context {config.block_size})")
    idx = torch.randint(0, config.vocab_size, (1, args.seq_len))
    t0 = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(idx, labels=idx)
    dt = time.perf_counter() - t0
    print(f"forward pass: input {tuple(idx.shape)} -> logits {tuple(out.logits.shape)}, "
          f"loss {out.loss.item():.3f} (ln V = {torch.log(torch.tensor(float(config.vocab_size))):.3f}), "
          f"{dt * 1000:.0f} ms")
    return 0
