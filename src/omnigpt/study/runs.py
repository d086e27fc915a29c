"""One study run, as a pure function of its spec, so runs can go to worker processes (one thread each).

``lm_run`` trains one family at one size and seed through the one ``Trainer`` and evaluates it on the first
``val_tokens`` tokens of the validation split in windows of block_size (``data.shards.eval_windows``: every token
predicted once), keeping the loss at each position of the window — position t has t tokens of context. Runs marked
``attention`` also draw the heat maps and head summaries of ``study/attention.py`` for ``ATTENTION_TEXT``.

``mm_run`` trains the multimodal recipe and scores generated answers on held-out images at every evaluation
(``CurveTrainer``: the trainer's periodic validation plus the task's answer accuracy), for accuracy curves.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from omnigpt.apps import load_recipe
from omnigpt.data.shards import TokenData, eval_windows
from omnigpt.models.gpt import GPT
from omnigpt.study.attention import analyse
from omnigpt.study.flops import matmul_params, training_flops
from omnigpt.train.trainer import Trainer

# The chosen text of the heat maps: Hamlet's soliloquy, whose repeated words ("to be", "to") show copying heads.
ATTENTION_TEXT = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings "
                  "and arrows of outrageous fortune, or to take arms against a sea of troubles")


@torch.no_grad()
def loss_by_position(model: GPT, data: TokenData, block_size: int, max_tokens: int | None,
                     batch_size: int = 32) -> tuple[float, list[float], int]:
    """(mean loss over all predicted tokens, mean loss at each window position (T,), tokens) on the val split."""
    model.eval()
    windows = eval_windows(data.shards("val"), block_size, max_tokens)
    total, count = np.zeros(block_size), np.zeros(block_size)
    for i in range(0, len(windows), batch_size):
        group = windows[i : i + batch_size]
        full = [w for w in group if len(w) == block_size + 1]
        rest = [w for w in group if len(w) != block_size + 1]  # a shard's last window is shorter: on its own
        for batch in ([np.stack(full)] if full else []) + [w[None] for w in rest]:
            xy = torch.from_numpy(batch.astype(np.int64))
            logits = model(xy[:, :-1]).logits.float()  # (B, t, V)
            nll = F.cross_entropy(logits.transpose(1, 2), xy[:, 1:], reduction="none")  # (B, t)
            t = nll.shape[1]
            total[:t] += nll.sum(0).double().numpy()
            count[:t] += nll.shape[0]
    per_pos = (total / np.maximum(count, 1)).tolist()
    return float(total.sum() / count.sum()), per_pos, int(count.sum())


def lm_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one LM run; returns its results row (the keys of ``results.jsonl``)."""
    t0, c0 = time.perf_counter(), time.process_time()
    recipe = load_recipe(None, spec["recipe"])
    trainer = Trainer(recipe)
    result = trainer.fit()
    model: GPT = trainer.model
    cfg = model.config
    val_loss, per_pos, val_tokens = loss_by_position(model, trainer.task.data, cfg.block_size, spec["val_tokens"])
    row = {"name": spec["name"], "kind": spec["kind"], "family": spec["family"], "size": spec["size"],
           "seed": recipe.seed, "params": model.num_params(), "matmul_params": matmul_params(cfg),
           "flops": training_flops(cfg, result.tokens), "tokens": result.tokens, "val_loss": round(val_loss, 5),
           "train_loss": result.train_loss, "lr": recipe.lr, "n_layer": cfg.n_layer, "n_embd": cfg.n_embd,
           "n_head": cfg.n_head, "window": cfg.local_window or None, "val_tokens": val_tokens,
           "loss_by_position": [round(x, 4) for x in per_pos], "wall_s": None}
    if spec.get("attention"):
        tok = trainer.task.preprocessor
        ids = tok.encode(ATTENTION_TEXT)[: cfg.block_size]
        labels = [tok.decode([i]).replace("\n", "⏎") for i in ids]
        heads = analyse(model, ids, labels, Path(spec["attention"]), spec["family"], min(24, cfg.block_size // 2))
        Path(spec["attention"], f"{spec['family']}_heads.jsonl").write_text(
            "".join(json.dumps(h) + "\n" for h in heads))
    if not spec.get("keep_checkpoint"):
        shutil.rmtree(Path(recipe.out_dir) / "checkpoints", ignore_errors=True)
    row["wall_s"] = round(time.perf_counter() - t0, 2)
    row["cpu_s"] = round(time.process_time() - c0, 2)  # CPU time: what the run costs however busy the machine was
    return row


class CurveTrainer(Trainer):
    """The trainer with the generated answers' accuracy added to every periodic validation (not only the last)."""

    def validate(self, limit: int | None) -> dict[str, Any]:
        from omnigpt.apps.multimodal.task import answer_metrics

        out = super().validate(limit)
        if limit is not None and self.r.data.eval:
            with self._autocast():
                out |= answer_metrics(self.task.model, self.task.processor, self.r.data.eval,
                                      self.r.data.max_new_tokens)
        return out


def mm_run(spec: dict[str, Any]) -> dict[str, Any]:
    """Train the multimodal recipe; returns the accuracy curve [(step, exact match)] and the final accuracy."""
    t0, c0 = time.perf_counter(), time.process_time()
    recipe = load_recipe(None, spec["recipe"])
    trainer = CurveTrainer(recipe)
    result = trainer.fit()
    label = recipe.data.eval[0].label
    curve = [(h["step"], h[f"{label}/exact_match"]) for h in result.history if f"{label}/exact_match" in h]
    shutil.rmtree(Path(recipe.out_dir) / "checkpoints", ignore_errors=True)
    return {"name": spec["name"], "staged": spec["staged"], "steps": result.step,
            "stages": [s.name for s in recipe.stages], "curve": curve, "accuracy": curve[-1][1] if curve else None,
            "val_loss": result.val_loss, "eval_items": recipe.data.eval[0].limit,
            "wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2)}


__all__ = ["ATTENTION_TEXT", "CurveTrainer", "loss_by_position", "lm_run", "mm_run"]
