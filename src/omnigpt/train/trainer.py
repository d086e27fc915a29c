"""The one training loop: every task, one process or many under torchrun (DDP, or FSDP2), exactly resumable.

One optimizer step, the way nanoGPT's ``train.py`` does it:

    for each of the ``accumulation`` micro-batches:  loss = task loss under autocast;  (loss / acc).backward()
    clip the global grad norm;  AdamW step (decay on matrices only);  lr from the stage's warmup + cosine

What is trained comes from a ``Task`` (``train/task.py``; the applications in ``apps/`` register theirs): it builds
the model and its tokenizer or processor, gives the rows of each step's batch as a pure function of the step, the
module that computes the loss, and evaluation.
Around the step, for every task: staged schedules with per-module learning rates and frozen modules
(``schedule.py``), periodic validation, a progress bar (a line per log interval when stdout is not a terminal),
``metrics.jsonl`` and ``loss.png``, atomic checkpoints (``checkpoints/state.py``), SIGTERM/SIGINT → checkpoint and
exit, a wall-clock guard, and non-finite losses skipped (counted; ``max_nonfinite`` in a row stop the run).

Portable. The compute dtype is resolved from the hardware (``dtype: auto``, ``kernels/precision.py``: bf16 autocast
only where the device computes bf16 natively, fp32 elsewhere) and printed with its reason at start. A recipe is
defined by its steps: ``max_minutes`` is a guard that stops a run on a slow or busy machine, never a schedule, and
a stopped run says so — on the console, in ``run.json`` (steps done / planned, why) and in its evaluation.

Exact resume. Everything a step reads is either in the checkpoint (weights, AdamW moments, stage counters, every
RNG state) or a pure function of the step: the batch and the learning rate. A run killed at any point and resumed
from its last committed checkpoint replays the same steps and ends bit-identical to an uninterrupted run (same
thread count: CPU kernels reduce in a thread-count-dependent order). bf16 runs on CPU also plan their GEMMs
(``kernels/matmul.py``); the plan is written to ``out_dir`` before the first update and read back on resume.

Distributed. Micro-batch ``k`` of rank ``r`` at step ``s`` holds rows ``(k·world + r)·b …`` of step ``s``'s global
batch, so N processes with accumulation A/N see exactly the batches one process with accumulation A sees;
gradients are averaged by DDP. Only rank 0 writes files. References: nanoGPT ``train.py``, litgpt ``pretrain.py``,
torchtitan (``Trainer`` with model-specific hooks, FSDP2 ``fully_shard``, signal handling, state-dict APIs).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from omnigpt.checkpoints import state as ts
from omnigpt.kernels import matmul
from omnigpt.kernels.attention import use_fp32_backward_attention
from omnigpt.kernels.precision import resolve_dtype
from omnigpt.models.gpt import Block
from omnigpt.train.recipe import Recipe, recipe_to_dict, validate
from omnigpt.train.report import plot_metrics, write_run_status
from omnigpt.train.schedule import build_optimizer, set_lr
from omnigpt.train.task import Task, evaluating, task_class


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row: the run is diverging."""


@dataclass
class TrainResult:
    step: int
    train_loss: float | None
    val_loss: float | None
    eval: dict[str, Any] | None  # final evaluation
    wall_time: float
    tokens: int
    nonfinite_steps: int
    checkpoint: str | None
    interrupted: bool = False  # stopped by SIGTERM/SIGINT after saving
    time_limited: bool = False  # stopped early by the max_minutes guard
    planned_steps: int = 0  # the recipe's max_steps
    dtype: str = "float32"  # the resolved compute dtype
    history: list[dict[str, Any]] = field(default_factory=list)


def device_for(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA when present, else CPU; a bare ``cuda`` → this process's GPU under torchrun."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


class Trainer:
    """Builds the task, model and optimizer from a recipe and runs ``fit()``. Recipe and data errors surface in
    ``__init__``, before any step."""

    def __init__(self, recipe: Recipe, resume: bool = False) -> None:
        self.r = r = recipe
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        validate(r, self.world)
        self.device = device_for(r.device, int(os.environ.get("LOCAL_RANK", "0")))
        self.is_main = self.rank == 0
        if r.threads:
            torch.set_num_threads(r.threads)
        if self.world > 1 and not dist.is_initialized():
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.out = Path(r.out_dir)
        self.ckpt_root = self.out / "checkpoints"
        existing = ts.latest_checkpoint(self.ckpt_root)
        if existing is not None and not resume:  # never silently mix two runs in one directory
            raise ValueError(f"{self.out} already has checkpoints (newest {existing.name}): pass --resume to "
                             f"continue it, or choose another out_dir")
        self.precision = resolve_dtype(r.dtype, self.device)
        self.amp_dtype = self.precision.autocast
        if self.is_main and r.progress:  # runs without progress output (tests, the study) keep it in recipe.json
            print(f"dtype {self.precision.name} ({self.precision.requested}: {self.precision.reason})", flush=True)
        self.micro = r.micro(self.world)
        self.accumulation = r.accumulation(self.world)

        # The task prepares its data (rank 0 first, the others wait) and builds the model from the seed: the same
        # initial weights on every rank.
        if self.is_main:
            task_class(r.task).prepare(r)
        self._barrier()
        torch.manual_seed(r.seed)
        self.task: Task = task_class(r.task)(r)
        self.model = self.task.model
        self.step = self.stage_idx = self.stage_step = self.nonfinite_total = self.tokens_seen = 0
        self.resumed_from: Path | None = None
        loaded = None
        if resume and existing is not None:
            self.task.load_checkpoint(existing)
            loaded = ts.load_checkpoint_state(existing)
            self.resumed_from = existing
        if self.is_main and resume:
            print(f"resuming from {existing}" if existing else f"no checkpoint in {self.ckpt_root}: starting fresh",
                  flush=True)
        if self.is_main and loaded is None and (self.out / "metrics.jsonl").exists():
            (self.out / "metrics.jsonl").unlink()  # a fresh start: the old curve belonged to an abandoned run
        self.train_module = self.task.train_module().to(self.device)
        if self.device.type == "cpu" and self.amp_dtype == torch.bfloat16:  # CPU bf16 kernels, by module replacement
            use_fp32_backward_attention(matmul.use_planned_linears(self.train_module))
        self._trainable = [p.requires_grad for p in self.train_module.parameters()]  # before stages freeze any
        self.fsdp = self.world > 1 and r.parallelism == "fsdp"
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in [m for m in self.train_module.modules() if isinstance(m, Block)]:
                fully_shard(block)
            fully_shard(self.train_module)  # the root is the module whose forward runs, so its hooks fire
        self.planner = self._matmul_planner(resume)
        if loaded is not None:
            self._restore(loaded)
        else:
            self._begin_stage(None)
            torch.manual_seed(r.seed + self.rank)  # dropout streams differ per rank
        self._stop_signal: int | None = None
        self._stop_now = self._interrupted = False
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------------------------------
    def _begin_stage(self, optimizer_state: dict[str, Any] | None) -> None:
        """Freeze what the current stage does not train, build its AdamW (restoring moments on resume) and wrap
        the loss module for DDP / torch.compile (DDP registers hooks on the parameters that train now)."""
        r = self.r
        stage = r.stages[self.stage_idx]
        fused = (self.device.type in ("cpu", "cuda") and not self.fsdp) or None  # DTensors: foreach only
        self.optimizer = build_optimizer(self.train_module, stage, (r.beta1, r.beta2), r.eps, fused=fused)
        if optimizer_state is not None:
            if self.fsdp:
                from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

                set_optimizer_state_dict(self.train_module, self.optimizer, optimizer_state,
                                         options=StateDictOptions(full_state_dict=True))
            else:
                self.optimizer.load_state_dict(optimizer_state)
        self.wrapped: nn.Module = self.train_module
        if self.world > 1 and r.parallelism == "ddp":
            self.wrapped = nn.parallel.DistributedDataParallel(
                self.train_module, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.task.unused_parameters)
        if r.compile:
            self.wrapped = torch.compile(self.wrapped)

    def _matmul_planner(self, resume: bool) -> matmul.MatmulPlanner | None:
        """bf16 CPU runs plan their GEMMs. The plan this run measured lives in out_dir, so a resumed run (killed
        before or after a checkpoint) computes exactly as the uninterrupted one would."""
        r = self.r
        if r.matmul_plan == "off" or r.compile or self.device.type != "cpu" or self.amp_dtype != torch.bfloat16:
            return None
        planner = matmul.MatmulPlanner()
        self._plan_file = self.out / f"matmul_plan.rank{self.rank}.json"
        if r.matmul_plan != "auto":
            planner.load(r.matmul_plan)
        elif resume and self._plan_file.is_file():
            planner.load(self._plan_file)
        self._plan_saved: dict[Any, Any] | None = None
        return planner

    def _save_plan(self) -> None:
        if self.planner is not None and self._plan_saved != self.planner.plans:
            self.out.mkdir(parents=True, exist_ok=True)
            self.planner.save(self._plan_file)
            self._plan_saved = dict(self.planner.plans)

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def _restore(self, loaded: dict[str, Any]) -> None:
        st = loaded["state"]
        if st["world_size"] != self.world:
            raise ValueError(f"checkpoint was written by {st['world_size']} processes, this run has {self.world}: "
                             f"exact resume needs the same world size")
        if loaded["modules"]:
            missing, unexpected = self.train_module.load_state_dict(loaded["modules"], strict=False)
            missing = [k for k in missing if not k.startswith(self.task.model_prefix)]  # the model came from its files
            if unexpected or missing:
                raise ValueError(f"trainer_state/modules.pt does not fit this run's training modules "
                                 f"(unexpected {unexpected[:4]}, missing {missing[:4]})")
        self.step, self.nonfinite_total = st["step"], st["nonfinite_total"]
        self.tokens_seen, self.stage_idx, self.stage_step = st["tokens_seen"], st["stage"], st["stage_step"]
        if self.stage_idx < len(self.r.stages) and self.stage_step >= self.r.stages[self.stage_idx].steps:
            self.stage_idx, self.stage_step = self.stage_idx + 1, 0  # saved at a stage's end: the next starts fresh
            if self.stage_idx < len(self.r.stages):
                self._begin_stage(None)
        elif self.stage_idx < len(self.r.stages):
            self._begin_stage(loaded["optimizer"])
        ts.set_rng_state(loaded["rng"][f"rank{self.rank}"])
        if self.is_main:  # forget metrics logged after the checkpoint: those steps will be replayed
            mf = self.out / "metrics.jsonl"
            if mf.exists():
                rows = [ln for ln in mf.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= self.step]
                mf.write_text("".join(r + "\n" for r in rows))

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._stop_signal is not None:  # a second Ctrl-C / SIGTERM: stop now, without the checkpoint
            raise KeyboardInterrupt
        self._stop_signal = signum  # acted on after the current step, when the state is consistent

    def _log(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    # ------------------------------------------------------------------------------------------------------
    def save(self) -> Path:
        """Commit checkpoints/step_N (collective under torchrun: every rank calls it, rank 0 writes)."""
        model: nn.Module | None = self.model
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            full_sd, optim_sd = get_state_dict(self.train_module, self.optimizer, options=opts)  # gathers
            model = self.task.new_model() if self.is_main else None
            if model is not None:
                prefix = self.task.model_prefix
                model.load_state_dict({k.removeprefix(prefix): v for k, v in full_sd.items() if k.startswith(prefix)})
        else:
            full_sd, optim_sd = self.train_module.state_dict(), self.optimizer.state_dict()
        # Training-only modules beside the model (AudioCTC's ctc_head) are not part of the saved model: they go into
        # trainer_state/, so a resume continues them exactly.
        extra = {k: v.detach().cpu() for k, v in full_sd.items() if not k.startswith(self.task.model_prefix)}
        rngs = [ts.rng_state()]
        if self.world > 1:
            rngs = [None] * self.world
            dist.all_gather_object(rngs, ts.rng_state())
        dest = self.ckpt_root / f"step_{self.step:06d}"
        if self.is_main:
            state = {"step": self.step, "stage": self.stage_idx, "stage_step": self.stage_step,
                     "nonfinite_total": self.nonfinite_total, "tokens_seen": self.tokens_seen,
                     "world_size": self.world, "task": self.r.task, "recipe": recipe_to_dict(self.r)}
            ts.save_checkpoint(dest, model.cpu() if model is not self.model else model, self.task.preprocessor,
                               state, optim_sd, rngs, extra)
            ts.prune_checkpoints(self.ckpt_root, self.r.keep_checkpoints)
        self._barrier()
        return dest

    def validate(self, limit: int | None) -> dict[str, Any]:
        """The task's validation metrics (``val_loss`` among them); a full evaluation when ``limit`` is None."""
        with self._autocast(), evaluating(self.model):
            return self.task.evaluate(limit, self.amp_dtype, self.wrapped if self.fsdp else None)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    def _train_step(self) -> tuple[float, float]:
        """One optimizer step; returns (loss averaged over ranks and micro-batches, grad norm)."""
        r, b = self.r, self.micro
        stage = r.stages[self.stage_idx]
        self._lr = set_lr(self.optimizer, stage.lr_multiplier(self.stage_step))
        loss_sum = torch.zeros((), device=self.device)
        for k in range(self.accumulation):
            batch = self.task.batch(self.step, (k * self.world + self.rank) * b, b)
            batch = {n: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for n, v in batch.items()}
            sync = k == self.accumulation - 1
            no_sync = getattr(self.wrapped, "no_sync", None)
            ctx = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
            with ctx, matmul.planned(self.planner), self._autocast():
                loss = self.wrapped(**batch)
            (loss / self.accumulation).backward()
            loss_sum += loss.detach()
        self._save_plan()  # before the update: a kill from here on resumes with the plan these gradients used
        # One small all-reduce carries the mean loss and whether any rank got a stop signal or ran out of time.
        out_of_time = r.max_minutes is not None and time.perf_counter() - self._t_start > 60 * r.max_minutes
        flags = torch.tensor([float(self._stop_signal is not None), float(out_of_time)], device=self.device)
        stats = torch.cat([(loss_sum / self.accumulation)[None], flags])
        if self.world > 1:
            dist.all_reduce(stats)
            stats[0] /= self.world
        # Every rank decides from the same reduced flag, so all stop after the same step (no collective hangs).
        self._stop_now = bool(stats[1] > 0 or stats[2] > 0)
        self._interrupted = bool(stats[1] > 0)
        clip = r.grad_clip if r.grad_clip > 0 else float("inf")
        # In the module's own parameter order (the norm's float sum depends on it); frozen ones have no gradient.
        norm = torch.nn.utils.clip_grad_norm_([p for p in self.train_module.parameters() if p.requires_grad], clip)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor
        loss_val, norm_val = float(stats[0]), float(norm)
        if math.isfinite(loss_val) and math.isfinite(norm_val):
            self.optimizer.step()
            self._bad_in_a_row = 0
        else:  # skip the update, keep the weights and the AdamW moments as they were
            self.nonfinite_total += 1
            self._bad_in_a_row += 1
            if self._bad_in_a_row >= r.max_nonfinite:
                raise NonFiniteLossError(
                    f"loss or gradient was non-finite for {self._bad_in_a_row} steps in a row (step {self.step + 1}, "
                    f"{self.nonfinite_total} in total); the run is diverging: lower lr, check the data, or resume "
                    f"from the last checkpoint")
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.stage_step += 1
        self.tokens_seen += self.task.tokens_per_step
        return loss_val, norm_val

    def _next_stage(self) -> bool:
        """Move on when the stage's steps are done; False after the last."""
        if self.stage_step < self.r.stages[self.stage_idx].steps:
            return True
        if self.stage_idx + 1 >= len(self.r.stages):
            return False
        self.stage_idx, self.stage_step = self.stage_idx + 1, 0
        self._begin_stage(None)
        return True

    def _done(self) -> bool:
        """After this step the run ends: the last stage is complete, or a stop was agreed."""
        final = self.stage_idx == len(self.r.stages) - 1
        return self._stop_now or (final and self.stage_step >= self.r.stages[-1].steps)

    def fit(self) -> TrainResult:
        r = self.r
        t_start = self._t_start = time.perf_counter()
        self._bad_in_a_row = 0
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)} \
            if threading.current_thread() is threading.main_thread() else {}
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "recipe.json").write_text(
                json.dumps({**recipe_to_dict(r), "precision": self.precision.as_dict()}, indent=1) + "\n")
        tty = sys.stderr.isatty()
        show = r.progress and self.is_main
        bar = tqdm(total=r.max_steps, initial=self.step, disable=not (show and tty), unit="step", dynamic_ncols=True)
        say = bar.write if show else (lambda _: None)
        last_loss = val_loss = None
        final: dict[str, Any] | None = None
        t_log, tok_log = time.perf_counter(), 0
        saved_at = self.step if self.resumed_from is not None else -1
        interrupted = time_limited = False
        try:
            while self.stage_idx < len(r.stages) and self._next_stage():
                self.wrapped.train()
                last_loss, norm = self._train_step()
                tok_log += self.task.tokens_per_step
                bar.update(1)
                last = self._done()
                if self.step % r.log_interval == 0 or last:
                    dt = time.perf_counter() - t_log
                    row = {"step": self.step, "stage": r.stages[self.stage_idx].name, "loss": last_loss,
                           "lr": self._lr, "grad_norm": norm, "tokens": self.tokens_seen,
                           "tok_per_s": tok_log / max(dt, 1e-9), "nonfinite": self.nonfinite_total,
                           "time": time.perf_counter() - t_start}
                    self._log(row)
                    bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{row['tok_per_s']:,.0f}")
                    if not tty:  # a log file gets one line per interval, not one per bar refresh
                        say(f"step {self.step}/{r.max_steps} [{row['stage']}]: loss {last_loss:.4f}, "
                            f"lr {self._lr:.2e}, {row['tok_per_s']:,.0f} tok/s")
                    t_log, tok_log = time.perf_counter(), 0
                if self.step % r.eval_interval == 0 or last:
                    val = self.validate(r.eval_limit)
                    val_loss = val.get("val_loss")
                    self._log({"step": self.step, **val})
                    if self.is_main:
                        say(f"step {self.step}: train loss {last_loss:.4f}, "
                            + ", ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float)))
                        plot_metrics(self.out / "metrics.jsonl", self.out / "loss.png")
                if self._stop_now:
                    break
                if self.step % r.checkpoint_interval == 0 or last:
                    self.save()
                    saved_at = self.step
            if saved_at != self.step:
                self.save()
            bar.close()
            interrupted = self._interrupted
            time_limited = not interrupted and self.step < r.max_steps  # the budget cut steps (any stage)
            where = self.ckpt_root / f"step_{self.step:06d}"
            if interrupted and self.is_main:
                print(f"stopped by signal {self._stop_signal} at step {self.step}; checkpoint saved in {where} "
                      f"(continue with --resume)", flush=True)
            elif time_limited and self.is_main:
                print(f"STOPPED EARLY: the max_minutes guard ({r.max_minutes} min) ended the run at step "
                      f"{self.step} of {r.max_steps}; the results below are of an unfinished run. Checkpoint saved in "
                      f"{where}: `--resume` with a larger --max_minutes finishes it", flush=True)
            if self.is_main:
                write_run_status(self.out, self.step, r, time_limited, interrupted, self.precision.as_dict(),
                                 time.perf_counter() - t_start)
            if r.final_eval and not interrupted:
                final = self.validate(None)
                self._log({"step": self.step, **{f"final_{k}": v for k, v in final.items()}})
                val_loss = final.get("val_loss", val_loss)
            if self.is_main:
                plot_metrics(self.out / "metrics.jsonl", self.out / "loss.png")
        finally:
            bar.close()
            for s, h in old.items():
                signal.signal(s, h)
            for p, trainable in zip(self.train_module.parameters(), self._trainable, strict=True):
                p.requires_grad_(trainable)  # stages froze some: the model leaves as the task built it
        return TrainResult(step=self.step, train_loss=last_loss, val_loss=val_loss, eval=final,
                           wall_time=time.perf_counter() - t_start, tokens=self.tokens_seen,
                           nonfinite_steps=self.nonfinite_total,
                           checkpoint=str(self.ckpt_root / f"step_{self.step:06d}"), interrupted=interrupted,
                           time_limited=time_limited, planned_steps=r.max_steps or 0, dtype=self.precision.name,
                           history=self.history)


def train(recipe: Recipe, resume: bool = False) -> TrainResult:
    """Build a ``Trainer`` from ``recipe`` and run it (the library entry point behind ``omnigpt train``)."""
    trainer = Trainer(recipe, resume=resume)
    try:
        with warnings.catch_warnings():
            return trainer.fit()
    finally:
        if dist.is_initialized():
            # DDP's reducer goes first, while the process group is still registered: were the reducer the last owner,
            # the group's destructor would run holding the GIL and join a gloo thread that waits for the GIL (an
            # intermittent hang at exit, pytorch/pytorch#56297). The group's own Python handle releases the GIL.
            trainer.wrapped = trainer.train_module
            gc.collect()
            dist.destroy_process_group()


__all__ = ["NonFiniteLossError", "TrainResult", "Trainer", "device_for", "train"]
