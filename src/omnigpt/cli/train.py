"""``omnigpt train RECIPE.yaml [--key=value ...] [--resume]``: run a training recipe.

The recipe's ``task`` picks the trainer: ``lm`` (default) is the text trainer (``omnigpt.train.trainer``; under
``torchrun --nproc_per_node=N`` it trains with DDP, or FSDP2 with --parallelism=fsdp); ``multimodal`` and
``contrastive`` run ``omnigpt.train.mm_pipeline`` (single process, no resume).
"""

from __future__ import annotations

import argparse
import json
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="YAML recipe (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in out_dir")
    p.add_argument("overrides", nargs=argparse.REMAINDER,
                   help="--key=value overrides, dotted for sections (--max_steps=100 --model.n_layer=6)")


def run(args: argparse.Namespace) -> int:
    from omnigpt.train.recipe import MultimodalRecipe, load_any_recipe

    overrides = [o for o in args.overrides if o != "--resume"]
    resume = args.resume or "--resume" in args.overrides
    recipe = load_any_recipe(args.recipe, overrides, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    if isinstance(recipe, MultimodalRecipe):
        from omnigpt.train.mm_pipeline import train_multimodal

        if resume:
            raise ValueError(f"task {recipe.task}: multimodal runs do not resume; start a new out_dir")
        print(json.dumps(train_multimodal(recipe), indent=1))
        return 0

    from omnigpt.train.trainer import NonFiniteLossError, train

    try:
        result = train(recipe, resume=resume)
    except NonFiniteLossError as e:
        print(f"omnigpt train: stopped: {e}")
        return 3
    if int(os.environ.get("RANK", "0")) == 0:
        summary = {k: v for k, v in vars(result).items() if k != "history"}
        print(json.dumps(summary, indent=1))
    return 143 if result.interrupted else 0
