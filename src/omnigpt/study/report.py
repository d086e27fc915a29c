"""The study's report: ``report.md`` with its tables and plots, built only from the files the runs wrote.

Inputs (all under the study directory): ``results.jsonl`` (one line per LM run), ``attention/*_heads.jsonl``,
``multimodal.jsonl`` (optional) and ``meta.json`` (command, wall time, plan). Rebuilding the report from them
gives the same numbers: the table cells are the JSONL values, rounded for print.
"""

from __future__ import annotations

import contextlib
import json
from collections import defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from omnigpt.study.flops import compare, fit_power_law, mean_spread
from omnigpt.study.plan import FAMILIES, FAMILY_NAMES


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_vs_compute(rows: list[dict[str, Any]], fits: dict[str, Any], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for i, fam in enumerate(f for f in FAMILIES if f in fits or any(r["family"] == f for r in rows)):
        pts = [(r["flops"], r["val_loss"]) for r in rows if r["family"] == fam]
        c, loss = np.array(pts).T
        ax.scatter(c, loss, color=f"C{i}", s=18, label=None)
        if fam in fits:
            f = fits[fam]
            xs = np.geomspace(c.min(), c.max(), 50)
            ax.plot(xs, f(xs), color=f"C{i}", lw=1.5,
                    label=f"{FAMILY_NAMES[fam]}: α = {f.alpha:.3f} ± {f.alpha_se:.3f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C (FLOPs, 6·N·D + attention)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("Loss vs compute at equal tokens, fit L = a·C^(−α)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_lines(series: dict[str, tuple[list[float], list[float]]], path: Path, xlabel: str, ylabel: str,
               title: str, logx: bool = False) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for name, (x, y) in series.items():
        ax.plot(x, y, "o-" if len(x) < 20 else "-", ms=3, label=name)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _table(header: list[str], body: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def final_loss_table(grid: list[dict[str, Any]], sizes: list[str]) -> tuple[list[str], list[list[Any]]]:
    """One row per family and size: params, FLOPs, lr, each seed's val loss and mean ± spread."""
    seeds = sorted({r["seed"] for r in grid})
    header = ["family", "size", "params", "FLOPs", "lr", *[f"val loss (seed {s})" for s in seeds], "mean ± spread"]
    by = defaultdict(dict)
    for r in grid:
        by[(r["family"], r["size"])][r["seed"]] = r
    body = []
    for fam in FAMILIES:
        for size in sizes:
            runs = by.get((fam, size))
            if not runs:
                continue
            first = next(iter(runs.values()))
            m, s = mean_spread([r["val_loss"] for r in runs.values()])
            body.append([fam, size, f"{first['params']:,}", f"{first['flops']:.3e}", f"{first['lr']:g}",
                         *[f"{runs[sd]['val_loss']:.4f}" if sd in runs else "" for sd in seeds], f"{m:.4f} ± {s:.4f}"])
    return header, body


def build_report(out: Path) -> Path:
    """Write ``out/report.md`` (and its plots) from the run files in ``out``."""
    out = Path(out)
    meta = json.loads((out / "meta.json").read_text())
    rows = read_jsonl(out / "results.jsonl")
    grid = [r for r in rows if r["kind"] == "grid"]
    fams = [f for f in FAMILIES if any(r["family"] == f for r in grid)]
    sizes = [s for s in meta["sizes"] if any(r["size"] == s for r in grid)]  # smallest first
    fits = {}
    for fam in fams:
        pts = [r for r in grid if r["family"] == fam]
        with contextlib.suppress(ValueError):  # too few points for a fit: the table still shows them
            fits[fam] = fit_power_law([r["flops"] for r in pts], [r["val_loss"] for r in pts])
    plot_loss_vs_compute(grid, fits, out / "loss_vs_compute.png")
    md = [f"# The article's claims, measured ({meta['mode']})", "",
          f"Command: `{meta['command']}`  ",
          f"Wall time: {meta['wall_s'] / 60:.1f} min on {meta['machine']} (load average {meta['load_avg'][0]} at the "
          f"end: other processes shared the cores); CPU time of the runs: {meta['cpu_s'] / 60:.1f} min.", "",
          meta["setup"], "", "## Architecture at equal budget", "",
          "![loss vs compute](loss_vs_compute.png)", "", "Final validation loss (nats/token) by family, size and seed:",
          "", _table(*final_loss_table(grid, sizes)), "",
          "Power-law fits L(C) = a·C^(−α) (least squares on log L vs log C over every size and seed; no irreducible "
          "term):", "",
          _table(["family", "α", "std. error of α", "a", "R²", "points"],
                 [[f, f"{fits[f].alpha:.4f}", f"{fits[f].alpha_se:.4f}", f"{fits[f].a:.4g}", f"{fits[f].r2:.3f}",
                   fits[f].n] for f in fams if f in fits]), ""]
    largest = sizes[-1] if sizes else None
    md += [f"Pairwise, at the largest size ({largest}), seeds compared:", ""]
    for a, b in combinations(fams, 2):
        la = [r["val_loss"] for r in grid if r["family"] == a and r["size"] == largest]
        lb = [r["val_loss"] for r in grid if r["family"] == b and r["size"] == largest]
        if la and lb:
            md.append(f"- {compare(a, la, b, lb)}")
    sweep = [r for r in rows if r["kind"] == "lr_sweep"]
    if sweep:
        lrs = sorted({r["lr"] for r in sweep})
        by = {(r["family"], r["lr"]): r["val_loss"] for r in sweep}
        md += ["", "Learning-rate sweep (middle size, seed 0); the lowest loss per family was used:", "",
               _table(["family", *[f"lr {x:g}" for x in lrs]],
                      [[f, *[f"{by[(f, x)]:.4f}" if (f, x) in by else "" for x in lrs]] for f in fams])]
    else:
        md += ["", f"Learning rates: {meta['lr_source']}"]

    md += ["", "## Context", ""]
    mid = meta["middle"]
    pos = {FAMILY_NAMES[r["family"]]: (list(range(1, len(r["loss_by_position"]) + 1)), r["loss_by_position"])
           for r in grid if r["size"] == mid and r["seed"] == min(x["seed"] for x in grid)}
    if pos:
        plot_lines(pos, out / "loss_by_position.png", "tokens of context (position in the window)",
                   "validation loss", f"Loss by position, size {mid}, seed 0", logx=True)
        md += ["![loss by position](loss_by_position.png)", "",
               "Validation loss at each position of the window (position t predicts token t+1 from t tokens):", "",
               _table(["family", *[f"pos {p}" for p in _probe_positions(meta["block_size"])]],
                      [[r["family"], *[f"{r['loss_by_position'][p - 1]:.3f}" for p in _probe_positions(
                          meta["block_size"])]] for r in grid if r["size"] == mid and r["seed"] == 0]), ""]
    window_rows = sorted([r for r in rows if r["family"] == "gpt3" and r["size"] == mid and r["seed"] == 0
                          and r["kind"] in ("grid", "window")], key=lambda r: r["window"] or 0)
    dense = [r for r in grid if r["family"] == "gpt2" and r["size"] == mid and r["seed"] == 0]
    if window_rows:
        body = [[f"{r['window']}", f"{r['val_loss']:.4f}", f"{r['flops']:.3e}"] for r in window_rows]
        body += [[f"dense (GPT-2, {meta['block_size']})", f"{r['val_loss']:.4f}", f"{r['flops']:.3e}"] for r in dense]
        md += [f"GPT-3's banded layers: window sweep (size {mid}, seed 0; odd layers see the last W tokens):", "",
               _table(["window W", "val loss", "FLOPs"], body), ""]

    heads = [h for p in sorted((out / "attention").glob("*_heads.jsonl")) for h in read_jsonl(p)]
    if heads:
        pngs = sorted(p.name for p in (out / "attention").glob("*.png"))
        md += ["## Attention, visible", "", f"Reference-path weights softmax(QKᵀ/√d_k) of every layer and head of the "
               f"size-{mid} models (seed 0) for the text: “{meta['attention_text']}”. One PNG per layer:", ""]
        md += [f"![{p}](attention/{p})" for p in pngs if p.startswith("gpt3")] + [""]
        md += ["Other layers: " + ", ".join(f"[{p}](attention/{p})" for p in pngs if not p.startswith("gpt3")), "",
               "Head summaries (entropy in nats; mean distance in tokens; previous-token and induction scores are "
               "attention weights, 0–1; induction on random tokens repeated twice):", "",
               _table(["model", "layer", "head", "window", "entropy", "mean distance", "previous-token", "induction"],
                      [[h["model"], h["layer"], h["head"], h["window"] or "dense", h["entropy"], h["mean_distance"],
                        h["previous_token"], h["induction"]] for h in heads]), ""]

    mm = read_jsonl(out / "multimodal.jsonl")
    md += ["## Multimodal at equal budget", ""]
    if mm:
        plot_lines({("with" if r["staged"] else "without") + " the alignment stage": (
            [p[0] for p in r["curve"]], [p[1] for p in r["curve"]]) for r in mm}, out / "multimodal_accuracy.png",
            "step", "answer accuracy (exact match)", "Fashion-MNIST answers, ViT from scratch")
        md += ["![multimodal accuracy](multimodal_accuracy.png)", "",
               _table(["run", "stages", "steps", f"accuracy ({mm[0]['eval_items']} test images)", "wall s"],
                      [[r["name"], " → ".join(r["stages"]), r["steps"], f"{r['accuracy']:.3f}", r["wall_s"]]
                       for r in mm]), ""]
    md += [meta.get("mm_note", "")]
    md += ["", "## Files", "", "`results.jsonl` (one line per LM run), `recipes/*.json` (the exact recipes), "
           "`attention/` (heat maps, head summaries), `runs/` (each run's metrics and loss curve)."]
    (out / "report.md").write_text("\n".join(md) + "\n")
    return out / "report.md"


def _probe_positions(T: int) -> list[int]:
    return sorted({p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, T) if p <= T})


__all__ = ["build_report", "final_loss_table", "read_jsonl"]
