"""The language applications of issue 13, trained and evaluated end to end: one row per model, with the baselines
``omnigpt eval`` measures in the same call, wall times on this machine and the command of every step.

    python benchmarks/language_apps.py                 # every row (about two hours on a 2-core CPU)
    python benchmarks/language_apps.py --only topic    # rows whose name contains "topic"
    python benchmarks/language_apps.py --smoke         # 2 steps and 8 eval items per row: checks the wiring

Each row runs ``omnigpt train RECIPE --out_dir=runs/apps/NAME --seed=S [overrides]`` then ``omnigpt eval
runs/apps/NAME``, exactly as printed. The table (Markdown) goes to ``runs/apps/results.md`` and the raw rows to
``runs/apps/results.jsonl``; rows with several seeds report mean ± half the range.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from apps import Row, main  # noqa: E402

# name, recipe, extra overrides, seeds, what the row is
ROWS: list[Row] = [
    ("sentiment-zh", "configs/tasks/sentiment-zh.yaml", [], [1337, 1338], "GPT classifier, from scratch"),
    ("sentiment-zh-pretrain", "configs/tasks/sentiment-zh-pretrain.yaml", [], [1337], "GPT-1 stage 1: Chinese LM"),
    ("sentiment-zh-gpt1", "configs/tasks/sentiment-zh.yaml",
     ["--model.config=null", "--model.init_from=runs/apps/sentiment-zh-pretrain"], [1337, 1338],
     "GPT-1 recipe: pre-trained LM, fine-tuned"),
    ("topic-bbc", "configs/tasks/topic-bbc.yaml", [], [1337, 1338], "GPT classifier, from scratch"),
    ("topic-bbc-smollm2", "configs/tasks/topic-bbc-smollm2.yaml", [], [1337], "SmolLM2-135M + LoRA + head"),
    ("summarize-bbc", "configs/tasks/summarize-bbc.yaml", [], [1337], "SmolLM2-135M-Instruct + LoRA"),
    ("summarize-bbc-scratch", "configs/tasks/summarize-bbc-scratch.yaml", [], [1337], "GPT from scratch"),
    ("summarize-wiki", "configs/tasks/summarize-wiki.yaml", [], [1337], "SmolLM2-135M-Instruct + LoRA"),
    ("summarize-wiki-scratch", "configs/tasks/summarize-wiki-scratch.yaml", [], [1337], "GPT from scratch"),
    ("translate-en-es", "configs/tasks/translate-en-es.yaml", [], [1337], "GPT from scratch"),
    ("translate-en-es-smollm2", "configs/tasks/translate-en-es-smollm2.yaml", [], [1337],
     "SmolLM2-135M-Instruct + LoRA"),
    # Qwen2.5-0.5B-Instruct (the pipelines' default) + LoRA; about 10-18 min each on 2 cores
    ("sentiment-zh-qwen", "configs/tasks/sentiment-zh-qwen.yaml", [], [1337], "Qwen2.5-0.5B-Instruct + LoRA, answers"),
    ("topic-bbc-qwen", "configs/tasks/topic-bbc-qwen.yaml", [], [1337], "Qwen2.5-0.5B-Instruct + LoRA, answers"),
    ("summarize-bbc-qwen", "configs/tasks/summarize-bbc-qwen.yaml", [], [1337], "Qwen2.5-0.5B-Instruct + LoRA"),
    ("summarize-wiki-qwen", "configs/tasks/summarize-wiki-qwen.yaml", [], [1337], "Qwen2.5-0.5B-Instruct + LoRA"),
    ("translate-en-es-qwen", "configs/tasks/translate-en-es-qwen.yaml", [], [1337], "Qwen2.5-0.5B-Instruct + LoRA"),
]
# rows whose evaluation generates with a chat model (and its zero-shot baseline): fewer test items, spread over the
# split; Qwen's classification rows: the first 200 test items, as benchmarks/zero_shot.py
EVAL_ARGS = {"summarize-bbc": ["--limit", "64"], "summarize-wiki": ["--limit", "64"],
             "translate-en-es-smollm2": ["--limit", "64"], "sentiment-zh-qwen": ["--limit", "200"],
             "topic-bbc-qwen": ["--limit", "200"], "summarize-bbc-qwen": ["--limit", "64"],
             "summarize-wiki-qwen": ["--limit", "64"], "translate-en-es-qwen": ["--limit", "64"]}


if __name__ == "__main__":
    raise SystemExit(main(ROWS, EVAL_ARGS, __doc__.split("\n\n")[0], "runs/apps"))
