"""The shared runner of ``language_apps.py`` and ``vision_speech_apps.py``: train each row's recipe, evaluate the
run with ``omnigpt eval``, record the wall times and the exact commands, and write the Markdown table.

Each row runs ``omnigpt train RECIPE --out_dir=ROOT/NAME --seed=S [overrides]`` then ``omnigpt eval ROOT/NAME``,
exactly as printed. The table goes to ``ROOT/results.md`` and the raw rows to ``ROOT/results.jsonl``; rows with
several seeds report mean ± half the range.
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

from omnigpt.kernels.precision import describe_machine

# name, recipe, extra overrides, seeds, what the row is
Row = tuple[str, str, list[str], list[int], str]
# the metrics a table shows, in this order (the first of them in eval.json that a row has); percentages ×100
METRICS = ("accuracy", "macro_f1", "rouge1", "rouge2", "rougeL", "bleu_sacrebleu", "bleu_whitespace", "chrf", "map50",
           "map", "bits_per_dim", "cas", "fd", "wer", "rouge_l", "recall@1", "recall@5")
FRACTIONS = ("accuracy", "macro_f1", "cas", "wer", "recall@1", "recall@5")


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


def has_limit(recipe: str) -> bool:
    """Whether the recipe's task takes ``data.limit`` (a small slice for the smoke run)."""
    import dataclasses

    import yaml

    from omnigpt.apps import sections

    spec = sections(yaml.safe_load(Path(recipe).read_text())["task"])[0]
    return dataclasses.is_dataclass(spec) and "limit" in {f.name for f in dataclasses.fields(spec)}


def percent(key: str, value: float) -> float:
    """Fractions (accuracy, F1, WER, recall) as percentages, like ROUGE, BLEU and chrF."""
    return 100 * value if key in FRACTIONS else value


def spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {(max(values) - min(values)) / 2:.1f}"


def main(rows: list[Row], eval_args: dict[str, list[str]], description: str, default_root: str) -> int:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--only", help="run the rows whose name contains this")
    p.add_argument("--smoke", action="store_true", help="2 steps, 8 eval items per row (wiring check)")
    p.add_argument("--root", default=default_root)
    p.add_argument("--lock", help="a lock file: each train/eval step runs under `flock LOCK` (a shared machine)")
    args = p.parse_args()
    print(describe_machine(), flush=True)  # the CPU, its ISA and the peaks measured in this run
    if args.lock:
        LOCK[:] = ["flock", args.lock]
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    py = [sys.executable, "-m", "omnigpt"]
    results = []
    for name, recipe, extra, seeds, what in rows:
        if args.only and args.only not in name:
            continue
        for i, seed in enumerate(seeds[:1] if args.smoke else seeds):
            run_dir = root / (name if i == 0 else f"{name}-seed{seed}")
            over = [f"--out_dir={run_dir}", f"--seed={seed}", *[e.replace(default_root, str(root)) for e in extra]]
            if args.smoke:
                over += ["--max_steps=2", "--eval_interval=1", "--eval_limit=4"]
                if has_limit(recipe):
                    over += ["--data.limit=64"]
            train_s = run([*py, "train", recipe, *over])
            row = {"name": name, "what": what, "recipe": recipe, "seed": seed, "train_s": round(train_s, 1),
                   "train_cmd": shlex.join(["omnigpt", "train", recipe, *over])}
            if "pretrain" not in name:
                eval_cmd = ["eval", str(run_dir), *(["--limit", "8"] if args.smoke else eval_args.get(name, []))]
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

