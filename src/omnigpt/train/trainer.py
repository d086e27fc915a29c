"""The training loop: one process or many under torchrun (DDP, or FSDP2), exactly resumable.

One optimizer step, the way nanoGPT's ``train.py`` does it:

    for each of the ``accumulation`` micro-batches:  loss = CE(model(x), y) under bf16 autocast; (loss / acc).backward()
    clip the global grad norm;  AdamW step (fused; decay on matrices only);  lr from warmup + cosine

Around it: periodic validation on a fixed slice of val, a tqdm bar with loss and tokens/s, ``metrics.jsonl``, a
``loss.png``, atomic checkpoints (``trainer_state.py``), SIGTERM/SIGINT → checkpoint and exit, and non-finite
losses skipped (counted; ``max_nonfinite`` in a row stop the run with a message).

Exact resume. Everything a step reads is either in the checkpoint (weights, AdamW moments, scheduler, every RNG
state, counters) or a pure function of the step number: the data order (``WindowSampler``) and the learning
rate. A run killed at any point and resumed from its last committed checkpoint therefore replays the same
steps and ends bit-identical to an uninterrupted run (same thread count — FACTS.md; tested with SIGKILL).
bf16 runs on CPU also plan their GEMMs (``omnigpt.kernels.matmul``: measured once per shape, the fastest blocking);
the plan is written to ``out_dir`` before the first update, and a resumed run reads it back.

Distributed. Micro-batch ``k`` of rank ``r`` at step ``s`` reads samples ``s·B + (k·world + r)·b …`` of the same
global order, so N processes with accumulation A/N see exactly the batches one process with accumulation A sees;
gradients are averaged by DDP. Only rank 0 writes files. References: nanoGPT ``train.py``, litgpt
``pretrain.py``, torchtitan (FSDP2 ``fully_shard``, signal handling, state-dict APIs).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
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
from omnigpt.data.shards import MANIFEST, TokenData, WindowSampler, prepare_data
from omnigpt.kernels import matmul
from omnigpt.kernels.losses import fused_linear_cross_entropy
from omnigpt.models.gpt import GPT
from omnigpt.train.evaluate import EvalResult, evaluate
from omnigpt.train.recipe import TrainRecipe, model_config, recipe_to_dict, validate


class NonFiniteLossError(RuntimeError):
    """Too many non-finite losses in a row: the run is diverging."""


@dataclass
class TrainResult:
    step: int
    train_loss: float | None
    val_loss: float | None
    eval: dict[str, Any] | None  # final full-pass evaluation
    wall_time: float
    tokens: int
    nonfinite_steps: int
    checkpoint: str | None
    interrupted: bool = False  # stopped by SIGTERM/SIGINT after saving
    time_limited: bool = False  # stopped early by max_minutes
    history: list[dict[str, Any]] = field(default_factory=list)


class LMLoss(nn.Module):
    """GPT + the fused LM-head cross-entropy (no (N, V) logits kept); the module DDP/FSDP wrap.

    ``y`` holds the next token of each position (already shifted), so a window of T + 1 tokens gives T targets."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.model.transformer(x).last_hidden_state  # (B, T, C)
        return fused_linear_cross_entropy(h, self.model.lm_head.weight, y)


def lr_multiplier(step: int, r: TrainRecipe) -> float:
    """Linear warmup from ~0 to lr over ``warmup_steps``, then cosine down to ``min_lr`` (nanoGPT's get_lr)."""
    if step < r.warmup_steps:
        return (step + 1) / (r.warmup_steps + 1)
    decay = r.decay_steps or r.max_steps
    if step >= decay or decay <= r.warmup_steps:
        return r.min_lr / r.lr if r.lr else 0.0
    progress = (step - r.warmup_steps) / (decay - r.warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 → 0
    return (r.min_lr + coeff * (r.lr - r.min_lr)) / r.lr if r.lr else 0.0


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (Linear weights, embeddings); never biases or LayerNorm gains (nanoGPT/GPT-3 practice)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def ensure_data(r: TrainRecipe, progress: bool) -> Path:
    """The prepared data directory: used as is, or prepared from ``data.sources`` when missing."""
    d = Path(r.data.dir)
    if (d / MANIFEST).is_file():
        have = json.loads((d / MANIFEST).read_text()).get("spec", {})
        if r.data.sources and have != r.data.fingerprint():
            raise ValueError(f"{d} was prepared from {have}, but the recipe asks for {r.data.fingerprint()}; "
                             f"delete it or point data.dir elsewhere")
        return d
    if not r.data.sources:
        raise FileNotFoundError(f"data.dir {d} has no prepared data ({MANIFEST}) and data.sources is empty; "
                                f"run `omnigpt prepare` or list sources in the recipe")
    return prepare_data(r.data, progress=progress)


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


class Trainer:
    """Builds everything from a recipe and runs ``fit()``. Errors in the recipe or data surface in __init__."""

    def __init__(self, recipe: TrainRecipe, resume: bool = False) -> None:
        self.r = r = recipe
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        validate(r, self.world)
        self.device = _device(r.device, int(os.environ.get("LOCAL_RANK", "0")))
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
        self.amp_dtype = torch.bfloat16 if r.dtype == "bfloat16" else None

        # Data: rank 0 prepares (if needed) while the others wait, then everyone memory-maps the same shards.
        if self.is_main:
            ensure_data(r, r.progress)
        self._barrier()
        self.data = TokenData(r.data.dir)
        self.tokenizer = self.data.tokenizer()
        self.config = model_config(r.model, vocab_size=self.data.vocab_size)
        if self.data.vocab_size > self.config.vocab_size:
            raise ValueError(f"model.vocab_size {self.config.vocab_size} is smaller than the data's vocabulary "
                             f"{self.data.vocab_size}")
        self.block_size = self.config.block_size
        self.sampler = WindowSampler(self.data.shards("train"), self.block_size, r.seed)
        self.accumulation = r.batch_size // (r.micro_batch * self.world)

        # Model and optimizer. Same seed on every rank → same init (DDP would broadcast rank 0's anyway).
        torch.manual_seed(r.seed)
        self.model = GPT(self.config)
        self.step, self.nonfinite_total, self.tokens_seen = 0, 0, 0
        self.resumed_from: Path | None = None
        loaded = None
        if resume and existing is not None:
            self.model.load_state_dict(ts.load_model(existing).state_dict())
            loaded = ts.load_checkpoint_state(existing)
            self.resumed_from = existing
        if self.is_main and resume:
            print(f"resuming from {existing}" if existing else f"no checkpoint in {self.ckpt_root}: starting fresh",
                  flush=True)
        if self.is_main and loaded is None and (self.out / "metrics.jsonl").exists():
            (self.out / "metrics.jsonl").unlink()  # a fresh start: the old curve belonged to an abandoned run
        self.model.to(self.device)
        self.wrapped: nn.Module = LMLoss(self.model)
        fused_ok = self.device.type in ("cpu", "cuda")
        self.fsdp = self.world > 1 and r.parallelism == "fsdp"
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in self.model.transformer.h:
                fully_shard(block)
            fully_shard(self.wrapped)  # the root is the module whose forward runs (LMLoss), so its hooks fire
            fused_ok = False  # DTensor params: the foreach implementation is the supported one
        self.optimizer = torch.optim.AdamW(param_groups(self.model, r.weight_decay), lr=r.lr,
                                           betas=(r.beta1, r.beta2), eps=r.eps, fused=fused_ok or None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_multiplier(s, r))
        if self.world > 1 and r.parallelism == "ddp":
            self.wrapped = nn.parallel.DistributedDataParallel(
                self.wrapped, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if r.compile:
            self.wrapped = torch.compile(self.wrapped)
        self.planner = self._matmul_planner(resume)
        if loaded is not None:
            self._restore(loaded)
        else:
            torch.manual_seed(r.seed + self.rank)  # dropout streams differ per rank
        self._stop_signal: int | None = None
        self._stop_now = self._interrupted = False
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------------------------------------------
    def _matmul_planner(self, resume: bool) -> matmul.MatmulPlanner | None:
        """bf16 CPU runs plan their GEMMs (omnigpt.kernels.matmul). The plan this run measured lives in out_dir, so a
        resumed run (killed before or after a checkpoint) computes exactly as the uninterrupted one would."""
        r = self.r
        if r.matmul_plan == "off" or r.compile or self.device.type != "cpu" or self.amp_dtype != torch.bfloat16:
            return None
        planner = matmul.MatmulPlanner()
        self._plan_file = self.out / f"matmul_plan.rank{self.rank}.json"
        if r.matmul_plan != "auto":
            planner.load(r.matmul_plan)
        elif resume and self._plan_file.is_file():
            planner.load(self._plan_file)
        self._plan_saved = None
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
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.wrapped, self.optimizer, loaded["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(loaded["optimizer"])
        self.scheduler.load_state_dict(loaded["scheduler"])
        self.step, self.nonfinite_total = st["step"], st["nonfinite_total"]
        self.tokens_seen = st["tokens_seen"]
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
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_sd, optim_sd = get_state_dict(self.wrapped, self.optimizer, options=opts)  # gathers (collective)
            model = GPT(self.config) if self.is_main else None
            if model is not None:
                model.load_state_dict({k.removeprefix("model."): v for k, v in model_sd.items()})
        else:
            model, optim_sd = self.model, self.optimizer.state_dict()
        rngs = [ts.rng_state()]
        if self.world > 1:
            rngs = [None] * self.world
            dist.all_gather_object(rngs, ts.rng_state())
        dest = self.ckpt_root / f"step_{self.step:06d}"
        if self.is_main:
            state = {"step": self.step, "nonfinite_total": self.nonfinite_total, "tokens_seen": self.tokens_seen,
                     "world_size": self.world, "recipe": recipe_to_dict(self.r)}
            ts.save_checkpoint(dest, model.cpu() if model is not self.model else model, self.tokenizer, state,
                               optim_sd, self.scheduler.state_dict(), rngs)
            ts.prune_checkpoints(self.ckpt_root, self.r.keep_checkpoints)
        self._barrier()
        return dest

    def validate(self, max_tokens: int | None) -> EvalResult:
        return evaluate(self.model, self.data, "val", batch_size=self.r.micro_batch, block_size=self.block_size,
                        max_tokens=max_tokens, dtype=self.amp_dtype, shard=not self.fsdp,
                        loss_fn=self.wrapped if self.fsdp else None)

    def _train_step(self) -> tuple[float, float]:
        """One optimizer step; returns (loss averaged over ranks and micro-batches, grad norm)."""
        r, b = self.r, self.r.micro_batch
        loss_sum = torch.zeros((), device=self.device)
        for k in range(self.accumulation):
            first = self.step * r.batch_size + (k * self.world + self.rank) * b
            xy = self.sampler.batch(first, b).to(self.device, non_blocking=True)
            sync = k == self.accumulation - 1
            no_sync = getattr(self.wrapped, "no_sync", None)
            ctx = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
            with ctx, matmul.planned(self.planner), torch.autocast(
                    self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
                loss = self.wrapped(xy[:, :-1], xy[:, 1:])
            (loss / self.accumulation).backward()
            loss_sum += loss.detach()
        self._save_plan()  # before the update: a kill from here on resumes with the plan these gradients used
        # One small all-reduce carries the mean loss and whether any rank got a stop signal.
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
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
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
        with warnings.catch_warnings():  # a skipped first step makes torch warn that the scheduler stepped first
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        self.step += 1
        self.tokens_seen += r.batch_size * self.block_size
        return loss_val, norm_val

    def fit(self) -> TrainResult:
        r = self.r
        t_start = self._t_start = time.perf_counter()
        self._bad_in_a_row = 0
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)} \
            if self._main_thread() else {}
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "recipe.json").write_text(json.dumps(recipe_to_dict(r), indent=1) + "\n")
        bar = tqdm(total=r.max_steps, initial=self.step, disable=not (r.progress and self.is_main), unit="step",
                   dynamic_ncols=True)
        last_loss = val_loss = None
        t_log, tok_log = time.perf_counter(), 0
        saved_at = self.step if self.resumed_from is not None else -1
        try:
            while self.step < r.max_steps:
                self.wrapped.train()
                last_loss, norm = self._train_step()
                tok_log += r.batch_size * self.block_size
                bar.update(1)
                last = self.step == r.max_steps or self._stop_now
                if self.step % r.log_interval == 0 or last:
                    dt = time.perf_counter() - t_log
                    row = {"step": self.step, "loss": last_loss, "lr": self.scheduler.get_last_lr()[0],
                           "grad_norm": norm, "tokens": self.tokens_seen, "tok_per_s": tok_log / max(dt, 1e-9),
                           "nonfinite": self.nonfinite_total, "time": time.perf_counter() - t_start}
                    self._log(row)
                    bar.set_postfix(loss=f"{last_loss:.4f}", tok_s=f"{row['tok_per_s']:,.0f}")
                    t_log, tok_log = time.perf_counter(), 0
                if self.step % r.eval_interval == 0 or last:
                    val_loss = self.validate(r.eval_tokens).loss
                    self._log({"step": self.step, "val_loss": val_loss})
                    if self.is_main:
                        bar.write(f"step {self.step}: train loss {last_loss:.4f}, val loss {val_loss:.4f}")
                        plot_metrics(self.out / "metrics.jsonl", self.out / "loss.png")
                if self._stop_now:
                    break
                if self.step % r.checkpoint_interval == 0 or self.step == r.max_steps:
                    self.save()
                    saved_at = self.step
            if saved_at != self.step:
                self.save()
            bar.close()
            interrupted = self._interrupted
            where = self.ckpt_root / f"step_{self.step:06d}"
            if interrupted and self.is_main:
                print(f"stopped by signal {self._stop_signal} at step {self.step}; checkpoint saved in {where} "
                      f"(continue with --resume)", flush=True)
            elif self._stop_now and self.is_main:
                print(f"time budget of {r.max_minutes} min used up at step {self.step}/{r.max_steps}; checkpoint "
                      f"saved in {where}", flush=True)
            final = None
            if r.final_eval and not interrupted:
                final = self.validate(None)
                self._log({"step": self.step, "final_val_loss": final.loss, "val_perplexity": final.perplexity,
                           "val_bits_per_byte": final.bits_per_byte, "val_tokens": final.tokens})
                val_loss = final.loss
            if self.is_main:
                plot_metrics(self.out / "metrics.jsonl", self.out / "loss.png")
        finally:
            bar.close()
            for s, h in old.items():
                signal.signal(s, h)
        return TrainResult(step=self.step, train_loss=last_loss, val_loss=val_loss,
                           eval=final.as_dict() if final else None, wall_time=time.perf_counter() - t_start,
                           tokens=self.tokens_seen, nonfinite_steps=self.nonfinite_total,
                           checkpoint=str(self.ckpt_root / f"step_{self.step:06d}"), interrupted=interrupted,
                           time_limited=self._stop_now and not interrupted, history=self.history)

    @staticmethod
    def _main_thread() -> bool:
        import threading

        return threading.current_thread() is threading.main_thread()


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
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def train(recipe: TrainRecipe, resume: bool = False) -> TrainResult:
    """Build a ``Trainer`` from ``recipe`` and run it (the library entry point behind ``omnigpt train``)."""
    trainer = Trainer(recipe, resume=resume)
    try:
        return trainer.fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
