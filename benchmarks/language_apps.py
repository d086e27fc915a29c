"""The language applications of issue 13, trained and evaluated end to end: one row per model, with the baselines
``omnigpt eval`` measures in the same call, wall times on this machine and the command of every step.

    python benchmarks/language_apps.py                 # every row (about an hour on a 2-core CPU)
    python benchmarks/language_apps.py --only topic    # rows whose name contains "topic"
    python benchmarks/language_apps.py --smoke         # 2 steps and 8 eval items per row: checks the wiring

Each row runs ``omnigpt train RECIPE --out_dir=runs/apps/NAME --seed=S [overrides]`` then ``omnigpt eval
runs/apps/NAME``, exactly as printed. The table (Markdown) goes to ``runs/apps/results.md`` and the raw rows to
``runs/apps/results.jsonl``; rows with several seeds report mean ± half the range.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name, recipe, extra overrides, seeds, what the row is
ROWS: list[tuple[str, str, list[str], list[int], str]] = [
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
]
# rows whose evaluation generates with SmolLM2 (and its zero-shot baseline): fewer test items, spread over the split
EVAL_ARGS = {"summarize-bbc": ["--limit", "64"], "summarize-wiki": ["--limit", "64"],
             "translate-en-es-smollm2": ["--limit", "64"]}
METRICS = ("accuracy", "macro_f1", "rouge1", "rouge2", "rougeL", "bleu", "chrf")


LOCK: list[str] = []  # ["flock", PATH] with --lock: each step waits for the CPU instead of sharing it


def run(cmd: list[str]) -> float:
    """Run one step; its wall time counts from when it holds the lock."""
    print("$", shlex.join(cmd), flush=True)
    script = "import subprocess, sys, time; t = time.perf_counter(); subprocess.run(sys.argv[1:], check=True); " \
             "print(time.perf_counter() - t, file=sys.stderr)"
    if not LOCK:
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        return time.perf_counter() - t0
    done = subprocess.run([*LOCK, sys.executable, "-c", script, *cmd], check=True, stderr=subprocess.PIPE, text=True)
    sys.stderr.write(done.stderr[: done.stderr.rstrip().rfind("\n") + 1])
    return float(done.stderr.rstrip().rsplit("\n", 1)[-1])


def percent(key: str, value: float) -> float:
    """Accuracy and F1 as percentages, like ROUGE, BLEU and chrF."""
    return 100 * value if key in ("accuracy", "macro_f1") else value


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {(max(values) - min(values)) / 2:.1f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", help="run the rows whose name contains this")
    p.add_argument("--smoke", action="store_true", help="2 steps, 8 eval items per row (wiring check)")
    p.add_argument("--root", default="runs/apps")
    p.add_argument("--lock", help="a lock file: each train/eval step runs under `flock LOCK` (a shared machine)")
    args = p.parse_args()
    if args.lock:
        LOCK[:] = ["flock", args.lock]
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "omnigpt"]
    results = []
    for name, recipe, extra, seeds, what in ROWS:
        if args.only and args.only not in name:
            continue
        for i, seed in enumerate(seeds[:1] if args.smoke else seeds):
            run_dir = root / (name if i == 0 else f"{name}-seed{seed}")
            over = [f"--out_dir={run_dir}", f"--seed={seed}", *[e.replace("runs/apps", str(root)) for e in extra]]
            if args.smoke:
                over += ["--max_steps=2", "--eval_interval=1", "--eval_limit=4"]
                if "task: lm" not in Path(recipe).read_text():
                    over += ["--data.limit=64"]
            train_s = run([*py, "train", recipe, *over])
            row = {"name": name, "what": what, "recipe": recipe, "seed": seed, "train_s": round(train_s, 1),
                   "train_cmd": shlex.join(["omnigpt", "train", recipe, *over])}
            if "pretrain" not in name:
                eval_cmd = ["eval", str(run_dir), *(["--limit", "8"] if args.smoke else EVAL_ARGS.get(name, []))]
                row["eval_s"] = round(run([*py, *eval_cmd]), 1)
                row["eval_cmd"] = shlex.join(["omnigpt", *eval_cmd])
                row["eval"] = json.loads((run_dir / "eval.json").read_text())
            results.append(row)
            with open(root / "results.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
    lines = ["| task / model | metric | omnigpt | baselines (same items) | train + eval time | commands |",
             "|---|---|---|---|---|---|"]
    by_name: dict[str, list[dict]] = {}
    for r in results:
        by_name.setdefault(r["name"], []).append(r)
    for name, rows in by_name.items():
        if "eval" not in rows[0]:
            lines.append(f"| {name} ({rows[0]['what']}) | — | — | — | {rows[0]['train_s']:.0f} s | "
                         f"`{rows[0]['train_cmd']}` |")
            continue
        ev = rows[0]["eval"]
        keys = [k for k in METRICS if k in ev]
        ours = "; ".join(f"{k} {spread([percent(k, r['eval'][k]) for r in rows])}" for k in keys)
        base = "; ".join(f"{b}: " + ", ".join(f"{k} {percent(k, v):.1f}" for k, v in m.items() if k in METRICS)
                         for b, m in ev.get("baselines", {}).items())
        t = statistics.mean(r["train_s"] + r["eval_s"] for r in rows)
        lines.append(f"| {name} ({rows[0]['what']}, {len(rows)} seed{'s' * (len(rows) > 1)}) | {', '.join(keys)} | "
                     f"{ours} | {base} | {t / 60:.1f} min | `{rows[0]['train_cmd']}`; `{rows[0]['eval_cmd']}` |")
    table = "\n".join(lines)
    (root / "results.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
