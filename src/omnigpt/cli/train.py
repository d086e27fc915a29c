"""``omnigpt train RECIPE.yaml [--key=value ...] [--resume]``: run a training recipe of any task.

One trainer for every task (``omnigpt.train.trainer``): ``lm``, ``multimodal``, ``contrastive``. Under
``torchrun --nproc_per_node=N`` it trains with DDP (or FSDP2 with --parallelism=fsdp); ``--resume`` continues from the
newest complete checkpoint in the recipe's out_dir.
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
    from omnigpt.apps import load_recipe
    from omnigpt.train.trainer import NonFiniteLossError, train

    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun rank: end with the agent, even if it is SIGKILLed
        from omnigpt.files.workers import watch_parent

        watch_parent()  # polled, not PR_SET_PDEATHSIG: the agent starts ranks from threads that end early
    overrides = [o for o in args.overrides if o != "--resume"]
    resume = args.resume or "--resume" in args.overrides
    recipe = load_recipe(args.recipe, overrides, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    try:
        result = train(recipe, resume=resume)
    except NonFiniteLossError as e:
        print(f"omnigpt train: stopped: {e}")
        return 3
    if int(os.environ.get("RANK", "0")) == 0:
        summary = {k: v for k, v in vars(result).items() if k != "history"}
        print(json.dumps(summary, indent=1))
    return 143 if result.interrupted else 0
