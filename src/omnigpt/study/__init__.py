"""``omnigpt study``: GPT-1 → GPT-2 → GPT-3 → Llama trained on the same data and compute, attention made visible,
and a report a reader can regenerate.

``run_study(out, "quick")`` runs the plan (``study/plan.py``) through the one ``Trainer``:

1. the corpus (Shakespeare) and a BPE tokenizer trained on its train split, prepared once;
2. with ``sweep`` (always in ``--full``): the learning rate of each family tuned on the middle size, seed 0;
3. every family × size × seed at the same token budget and token order (``study/runs.py``), evaluated on the same
   validation tokens, with the loss at every position of the window;
4. GPT-3's window sweep at the middle size; attention heat maps and head summaries of the middle models;
5. the multimodal recipe with and without its alignment stage, same steps, accuracy curves;
6. ``report.md`` with the tables and plots (``study/report.py``), ``results.jsonl``, ``recipes/*.json``.

Compute is counted from the shapes (``study/flops.py``): C = 6·N·D + 12·D·d_attn·Σ_l k̄_l (N: matmul weights
incl. the LM head; D: trained tokens; k̄_l: mean keys a query sees in layer l, banded layers counting their window).
Runs go to ``plan.workers`` processes with one thread each (``files/workers.py``: they die with the study, however
it ends); each run is a pure function of its recipe, so the numbers do not depend on how many run at once.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from omnigpt.data.shards import DataSpec, prepare_data
from omnigpt.files.workers import process_pool
from omnigpt.study.plan import FAMILIES, StudyPlan, lm_recipe, mm_recipe
from omnigpt.study.report import build_report
from omnigpt.study.runs import ATTENTION_TEXT, lm_run, mm_run


def _map(fn: Any, specs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    """Run ``fn`` over ``specs`` (in order of submission), in worker processes when ``workers`` > 0."""
    if not specs:
        return []
    if workers <= 0:
        return [fn(s) for s in specs]
    with process_pool(min(workers, len(specs))) as pool:  # workers die with this process, however it ends
        return list(pool.map(fn, specs))


def _lm_spec(plan: StudyPlan, out: Path, data_dir: str, kind: str, family: str, size: Any, seed: int, lr: float,
             window: int | None = None, attention: bool = False) -> dict[str, Any]:
    name = {"grid": f"{family}-{size.name}-s{seed}", "lr_sweep": f"sweep-{family}-{size.name}-lr{lr:g}",
            "window": f"{family}-{size.name}-w{window}-s{seed}"}[kind]
    recipe = lm_recipe(plan, data_dir, str(out / "runs" / name), family, size, seed, lr, window)
    (out / "recipes").mkdir(parents=True, exist_ok=True)
    (out / "recipes" / f"{name}.json").write_text(json.dumps(recipe, indent=1) + "\n")
    return {"name": name, "kind": kind, "family": family, "size": size.name, "recipe": recipe,
            "val_tokens": plan.val_tokens, "attention": str(out / "attention") if attention else None}


def run_study(out: Path | str, mode: Literal["quick", "full"] = "quick", plan: StudyPlan | None = None,
              command: str | None = None, **overrides: Any) -> Path:
    """Run the study into ``out`` and return the path of its ``report.md``.

    ``plan`` replaces the mode's plan (tests pass tiny ones); ``overrides`` change fields of the mode's plan
    (``sweep=True``, ``workers=1``, ``mm_steps=0``...)."""
    t0 = time.perf_counter()
    if plan is None:
        if mode not in ("quick", "full"):
            raise ValueError(f"mode must be 'quick' or 'full', got {mode!r}")
        plan = StudyPlan.quick(**overrides) if mode == "quick" else StudyPlan.full(**overrides)
    out = Path(out)
    if (out / "results.jsonl").exists():
        raise ValueError(f"{out} already holds a study (results.jsonl): choose another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "attention", ignore_errors=True)
    data_dir = str(out / "data" / f"{'-'.join(plan.sources)}-{plan.tokenizer.replace(':', '')}")
    prepare_data(DataSpec(dir=data_dir, sources=list(plan.sources), tokenizer=plan.tokenizer, val_fraction=0.1),
                 progress=False)
    mid = plan.middle
    rows: list[dict[str, Any]] = []

    # 1. Learning rates: a sweep on the middle size, seed 0, or the values recorded in plan.py.
    lr = dict(plan.tuned_lr)
    if plan.sweep:
        specs = [_lm_spec(plan, out, data_dir, "lr_sweep", f, mid, plan.seeds[0], x, attention=False)
                 for f in plan.families for x in plan.lr_grid]
        sweep = _map(lm_run, specs, plan.workers)
        rows += sweep
        for f in plan.families:
            best = min((r for r in sweep if r["family"] == f), key=lambda r: r["val_loss"])
            lr[f] = best["lr"]
        lr_source = "tuned by the sweep below"
    else:
        lr_source = (f"recorded in `omnigpt/study/plan.py` (TUNED_LR_QUICK), found by "
                     f"`omnigpt study --quick --sweep`: {', '.join(f'{f} {lr[f]:g}' for f in plan.families)}.")

    # 2. The grid (largest runs first, so two workers finish together) and GPT-3's window sweep.
    specs = [_lm_spec(plan, out, data_dir, "grid", f, s, seed, lr[f], attention=(s == mid and seed == plan.seeds[0]))
             for s in reversed(plan.sizes) for seed in plan.seeds for f in plan.families]
    if "gpt3" in plan.families:
        specs += [_lm_spec(plan, out, data_dir, "window", "gpt3", mid, plan.seeds[0], lr["gpt3"], w)
                  for w in plan.window_sweep]
    lm_rows = _map(lm_run, specs, plan.workers)
    rows += lm_rows
    with open(out / "results.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")

    # 3. Multimodal at equal steps: the alignment stage, or not.
    mm_rows: list[dict[str, Any]] = []
    if plan.mm_steps:
        from omnigpt.data.multimodal import prepare_fashion_mnist

        mm_dir = out / "data" / f"fashion-mnist-{plan.mm_limit}"
        if not (mm_dir / "test.llava.json").is_file():
            prepare_fashion_mnist(mm_dir, limit=plan.mm_limit)
        mm_specs = []
        for staged in (True, False):
            name = f"mm-fmnist-{'staged' if staged else 'unstaged'}"
            recipe = mm_recipe(plan, str(mm_dir), str(out / "runs" / name), staged)
            (out / "recipes" / f"{name}.json").write_text(json.dumps(recipe, indent=1) + "\n")
            mm_specs.append({"name": name, "staged": staged, "recipe": recipe})
        mm_rows = _map(mm_run, mm_specs, plan.workers)
        (out / "multimodal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mm_rows))
        mm_note = ("The vision tower is a ViT trained from scratch in both runs; the pretrained MobileNetV2 variant is "
                   "left out: that tower is not wired into recipes yet.")
    else:
        mm_note = "The multimodal comparison was left out of this run (mm_steps = 0)."

    val_desc = "the whole val split" if plan.val_tokens is None else f"its first {plan.val_tokens:,} tokens"
    setup = (f"Corpus: {', '.join(plan.sources)} (split by work, 10% of works held out), tokenizer `{plan.tokenizer}` "
             f"trained on the train split. Every LM run: {plan.steps} steps × {plan.batch_size} windows × "
             f"{plan.block_size} tokens = {plan.tokens_per_run:,} tokens in the same order for a given seed, AdamW "
             f"(β 0.9/0.99, weight decay 0.1), {plan.warmup} warmup steps then cosine to 0.1×lr, fp32, one thread. "
             f"Validation: {val_desc}, windows of {plan.block_size}. GPT-3's band in the grid: {plan.window} tokens. "
             f"FLOPs: C = 6·N·D + 12·D·d_attn·Σ_l k̄_l, N = matmul weights incl. the LM head, D = trained tokens, "
             f"k̄_l = mean keys per query in layer l ((T+1)/2 dense, its window for banded layers).")
    meta = {"mode": plan.mode, "command": command or f"omnigpt study --{plan.mode} --out {out}",
            "wall_s": round(time.perf_counter() - t0, 1), "machine": f"{platform.machine()} CPU, "
            f"{plan.workers or 1} worker process(es) × 1 thread", "setup": setup, "middle": mid.name,
            "block_size": plan.block_size, "attention_text": ATTENTION_TEXT, "lr_source": lr_source,
            "lr": lr, "mm_note": mm_note, "families": list(FAMILIES), "sizes": [x.name for x in plan.sizes],
            "cpu_s": round(sum(r.get("cpu_s", 0.0) for r in rows + mm_rows), 1),
            "load_avg": [round(x, 2) for x in os.getloadavg()]}
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return build_report(out)


__all__ = ["StudyPlan", "run_study"]
