"""Fine-tuning SmolLM2-135M-Instruct: LoRA vs full fine-tuning throughput, and held-out quality before/after.

Throughput (default): one process loads the model once and builds both training steps exactly as the trainer runs
them for ``configs/finetune-smollm2.yaml`` (``train.tasks.sft.SFTLoss``: hidden states → fused LM head + cross-
entropy on assistant tokens; AdamW over ``parameter_groups``, fused; bf16 autocast, fp32 master weights):

* full: every weight trains (134.5M parameters, 2 AdamW moments each);
* LoRA: the recipe's adapters (rank 8 on q/k/v/o/gate/up/down: 2.44M parameters), the base frozen — no weight
  gradients and no optimizer state for it, so each step skips the weight-gradient GEMMs and the big AdamW update.

Both see the same batches (the recipe's rows of step s, micro-batch ``--micro-batch``); steps are interleaved
(LoRA, full, LoRA, …) and medians reported, because the machine is shared and its speed drifts. The bf16 matmul
peak measured in the same run is printed for context.

Quality (``--eval [DIR]``): the recipe's held-out conversations scored by the task itself (assistant-token loss over
all of them, greedy answers to ``data.generate`` prompts: exact match, BLEU, three samples) for the pretrained model
or a fine-tuned checkpoint directory — run it before and after ``omnigpt train configs/finetune-smollm2.yaml``.

Measured here 2026-12-02 (2 threads on a shared, busy machine: matmul peak 330–390 GFLOP/s bf16 in these runs, about
a fifth of a quiet one's; only side-by-side ratios compare): micro-batch 8 × ~58 tokens (464 with padding), LoRA
332 tok/s vs full 269 tok/s (1.23×); with ``lora.dropout`` 0.05 LoRA 252 vs 260 (0.97×): one Bernoulli mask per
adapted layer on CPU is 17% of a LoRA step (profiler), more than the weight-gradient GEMMs LoRA saves.
Quality (``configs/finetune-smollm2.yaml``, 150 steps, 4 min 53 s wall on the same machine): held-out assistant loss
3.374 → 1.745 (314 conversations, 3,362 answer tokens); exact match 0/32 → 1/32, BLEU 1.8 → 6.1; answers go from
"2001: A Space Odyssey is a classic science fiction film that explores the human condition, with a focus on" to
"1980 film by Arthur C. Clarke." (reference "1968 film by Stanley Kubrick."): the style is learnt, not the facts.

Usage: ``python benchmarks/finetune.py [--steps 6] [--warmup 1] [--micro-batch 8] [--threads 2]``
       ``python benchmarks/finetune.py --eval [runs/finetune-smollm2]``
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch
from train import matmul_peak  # benchmarks/train.py (this folder is on sys.path when run as a script)

from omnigpt.apps import load_recipe
from omnigpt.apps.common.chat import SFTLoss
from omnigpt.apps.sft.task import SFTTask
from omnigpt.kernels.precision import describe_machine
from omnigpt.models.lora import LoRAWeights, apply_lora
from omnigpt.train.schedule import Stage, build_optimizer

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "finetune-smollm2.yaml"


def throughput(args: argparse.Namespace) -> None:
    recipe = load_recipe(RECIPE, ["--data.limit=2000", f"--batch_size={args.micro_batch}", "--out_dir=/tmp/unused"])
    torch.manual_seed(0)
    recipe_lora = recipe.model.lora
    if args.lora_dropout is not None:
        recipe_lora = dataclasses.replace(recipe_lora, dropout=args.lora_dropout)
    recipe.model.lora = None
    task = SFTTask(recipe)  # the pretrained model, plain
    full_model = task.model.train()
    lora_model = copy.deepcopy(full_model)
    apply_lora(lora_model, recipe_lora)
    runs = {"lora": SFTLoss(lora_model, LoRAWeights(lora_model)), "full": SFTLoss(full_model)}
    stage = Stage("bench", steps=1, lr=1e-5, warmup=0, min_lr_ratio=1.0, weight_decay=0.0)
    opts = {k: build_optimizer(m, stage, (0.9, 0.99), 1e-8, fused=True) for k, m in runs.items()}
    trainable = {k: sum(p.numel() for g in o.param_groups for p in g["params"]) for k, o in opts.items()}
    times: dict[str, list[float]] = {k: [] for k in runs}
    tokens: list[int] = []
    amp = args.dtype == "bfloat16"
    for step in range(args.warmup + args.steps):
        batch = task.batch(step, 0, args.micro_batch)
        if step >= args.warmup:
            tokens.append(batch["input_ids"].numel())
        for name, module in runs.items():
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = module(**batch)
            loss.backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            if step >= args.warmup:
                times[name].append(time.perf_counter() - t0)
    tok = statistics.median(tokens)
    rate = {k: tok / statistics.median(v) for k, v in times.items()}
    print(f"SmolLM2-135M-Instruct fine-tuning, {args.dtype}, LoRA {recipe_lora}, micro-batch {args.micro_batch} "
          f"(median {tok:.0f} tokens incl. padding), {torch.get_num_threads()} threads, {args.steps} steps each")
    print(f"matmul peak this run: {matmul_peak(torch.bfloat16) / 1e9:.0f} GFLOP/s bf16, "
          f"{matmul_peak(torch.float32) / 1e9:.0f} fp32")
    for k in runs:
        print(f"  {k:5s} {rate[k]:8.1f} tok/s   step {statistics.median(times[k]):.2f} s   "
              f"trainable {trainable[k] / 1e6:.2f}M params   steps {[round(t, 2) for t in times[k]]}")
    print(f"  LoRA / full: {rate['lora'] / rate['full']:.2f}x")


def quality(args: argparse.Namespace) -> None:
    over = ["--model.lora=null", "--out_dir=/tmp/unused"]
    if args.eval != "base":
        from omnigpt.checkpoints.state import resolve_checkpoint

        over.append(f"--model.pretrained={resolve_checkpoint(args.eval)}")
    recipe = load_recipe(RECIPE, over)
    task = SFTTask(recipe)
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.dtype == "bfloat16"):
        res = task.evaluate(None, torch.bfloat16, None)
    print(f"{recipe.model.pretrained}: {len(task.val_set)} held-out conversations ({time.perf_counter() - t0:.0f} s)")
    print(json.dumps(res, indent=1, ensure_ascii=False))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    p.add_argument("--lora-dropout", type=float, default=None, help="override the recipe's lora.dropout")
    p.add_argument("--eval", nargs="?", const="base", default=None,
                   help="score the pretrained model ('base') or a checkpoint / run directory on the held-out set")
    args = p.parse_args()
    print(describe_machine(), flush=True)  # the CPU, its ISA and the peaks measured in this run
    torch.set_num_threads(args.threads)
    quality(args) if args.eval else throughput(args)


if __name__ == "__main__":
    main()
