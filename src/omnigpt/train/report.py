"""What a run writes beside its checkpoints for people to read: ``run.json`` (how it ended, its dtype and machine)
and ``loss.png`` (train and validation loss against step)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omnigpt.kernels.precision import machine
from omnigpt.train.recipe import Recipe


def write_run_status(out: Path, step: int, r: Recipe, time_limited: bool, interrupted: bool,
                     precision: dict[str, str], wall: float) -> None:
    """``run.json``: how the run ended (steps done / planned, whether and why it stopped early), its dtype and
    device. ``omnigpt eval`` copies it into ``eval.json``, so an unfinished run's numbers never pass for finished."""
    why = (f"max_minutes guard ({r.max_minutes} min) reached" if time_limited
           else "stopped by a signal" if interrupted else None)
    status = {"steps_done": step, "steps_planned": r.max_steps, "finished": step >= (r.max_steps or 0),
              "stopped_early": why, "wall_time_s": round(wall, 1), "precision": precision, "machine": machine()}
    (out / "run.json").write_text(json.dumps(status, indent=1) + "\n")


def run_status(run_dir: Path) -> dict[str, Any] | None:
    """The ``run.json`` that ``write_run_status`` left in ``run_dir``, or None."""
    f = Path(run_dir) / "run.json"
    return json.loads(f.read_text()) if f.is_file() else None


def plot_metrics(metrics: Path, png: Path) -> None:
    """Train and validation loss against step (matplotlib's Agg backend: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()] if metrics.exists() else []
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r and math.isfinite(r["loss"])]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    final = [(r["step"], r["final_val_loss"]) for r in rows if "final_val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train", lw=1)
    if val:
        ax.plot(*zip(*val, strict=True), "o-", label="val (fixed slice)", ms=3)
    if final:
        ax.plot(*zip(*final, strict=True), "*", color="C3", ms=10, label="val, full pass")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


__all__ = ["plot_metrics", "run_status", "write_run_status"]
