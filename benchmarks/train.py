"""Training throughput, GPT-2-small shape: omnigpt's training step vs ``transformers``' GPT2LMHeadModel, one run.

Both models have GPT-2 small's architecture (124M parameters, 50,257 tokens, random weights), train on the same
random batches of ``--micro-batch`` × ``--seq`` tokens with the same optimizer (AdamW, fused, weight decay 0.1),
once in fp32 and once under bf16 autocast with fp32 master weights. The omnigpt step is exactly the trainer's
(``omnigpt.apps.lm.task.LMLoss``: hidden states → fused LM head + cross-entropy, no (N, V) logits kept);
``transformers`` gets ``labels=`` and computes its own loss. Steps are interleaved (omnigpt, transformers, …)
and medians are reported because the machine is shared and its speed drifts.

MFU = achieved FLOP/s / the machine's matmul peak measured in this run (fp32 and bf16 separately), with the
PaLM count of training FLOPs per token: 6 × (parameters in matmuls) + 12 × n_layer × seq × n_embd (attention).

omnigpt's bf16 step plans its GEMMs (``omnigpt.kernels.matmul``, as the trainer does; ``--matmul-plan off`` to compare):
the first warm-up step measures each shape's blocking (~45 s for GPT-2 small), later steps reuse the plan.

Measured here 2026-11-28 (2 threads; the machine shares its cores, so absolute figures swing up to 2× between
runs and only the side-by-side ratios are comparable): bf16 1.50×, 1.65×, 1.50×, 1.38×, 1.48× in five runs
(median 1.50×; omnigpt 346–421 tok/s, transformers 211–286; MFU 42–52% against 28–33%), 1.35–1.59× over five runs
of the version that measured 5 rounds per shape, 1.18× with ``--matmul-plan off`` (1.15× before these changes);
fp32 197 vs 164 (1.20×).
Where omnigpt's bf16 step goes (profiler): GEMMs 54%, dtype casts 11%, flash attention 9% (its backward in fp32:
faster than PyTorch's bf16 backward on CPU), fused AdamW 4%, GELU 6%.

Usage: ``python benchmarks/train.py [--steps 6] [--warmup 2] [--seq 256] [--micro-batch 4] [--threads 1]``
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

from omnigpt import GPT, GPTConfig
from omnigpt.apps.lm.task import LMLoss
from omnigpt.kernels import matmul
from omnigpt.kernels.attention import use_fp32_backward_attention
from omnigpt.kernels.matmul import MatmulPlanner, use_planned_linears
from omnigpt.kernels.precision import describe_machine
from omnigpt.train.schedule import Stage, build_optimizer


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 9) -> float:
    """FLOP/s of an n × n × n matmul (F.linear, the layout the models use) in ``dtype``: the median of
    ``repeats`` runs. Not the best: this machine shares its cores, and a single run in a quiet instant can come
    out 2.4× faster than the sustained rate (1,455 against ~600 GFLOP/s bf16 seen here), which would understate
    every MFU."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.nn.functional.linear(a, b)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.nn.functional.linear(a, b)
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def flops_per_token(c: GPTConfig, seq: int) -> float:
    """6N + 12·L·T·C: N = parameters that take part in matmuls (blocks + LM head; not the position table)."""
    n = c.num_params() - c.block_size * c.n_embd
    return 6 * n + 12 * c.n_layer * seq * c.n_embd


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    stage = Stage("full", 1, lr=1e-4, warmup=0, min_lr_ratio=1.0, weight_decay=0.1)  # the trainer's AdamW groups
    return build_optimizer(model, stage, betas=(0.9, 0.95), eps=1e-8, fused=True)


def omnigpt_step(model: LMLoss, opt: torch.optim.Optimizer, xy: torch.Tensor, bf16: bool,
                 planner: MatmulPlanner | None = None) -> float:
    with matmul.planned(planner), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(xy[:, :-1], xy[:, 1:])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def hf_step(model, opt: torch.optim.Optimizer, xy: torch.Tensor, bf16: bool) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(input_ids=xy[:, :-1], labels=xy[:, :-1]).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--micro-batch", type=int, default=4)
    ap.add_argument("--only", choices=["omnigpt", "transformers"], help="run one side only")
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both")
    ap.add_argument("--matmul-plan", choices=["auto", "off"], default="auto",
                    help="omnigpt's bf16 GEMM planning (the trainer's default: auto)")
    ap.add_argument("--threads", type=int, help="torch threads (default: all cores); with 1, CPU-time figures too")
    args = ap.parse_args()
    print(describe_machine(), flush=True)  # the CPU, its ISA and the peaks measured in this run
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = GPTConfig.from_name("gpt2")
    B, T = args.micro_batch, args.seq
    print(f"GPT-2 small ({cfg.num_params():,} parameters), micro-batch {B} × seq {T}, AdamW fused, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"measured matmul peak: fp32 {peaks['fp32'] / 1e9:,.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:,.0f} GFLOP/s")

    runners = {}
    if args.only != "transformers":
        ours = LMLoss(use_fp32_backward_attention(use_planned_linears(GPT(cfg)))).train()  # the trainer's CPU kernels
        planner = MatmulPlanner() if args.matmul_plan == "auto" else None  # measures on the warm-up steps
        runners["omnigpt"] = (functools.partial(omnigpt_step, planner=planner), ours, make_optimizer(ours.model))
    if args.only != "omnigpt":
        import transformers

        hf_cfg = transformers.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        theirs = transformers.GPT2LMHeadModel(hf_cfg).train()
        runners["transformers"] = (hf_step, theirs, make_optimizer(theirs))
    batches = [torch.randint(0, cfg.vocab_size, (B, T + 1)) for _ in range(4)]
    fpt = flops_per_token(cfg, T)
    results: dict[tuple[str, str], float] = {}
    precisions = ("fp32", "bf16") if args.precision == "both" else (args.precision,)
    for precision in precisions:
        times: dict[str, list[float]] = {name: [] for name in runners}
        cpu: dict[str, list[float]] = {name: [] for name in runners}
        for i in range(args.warmup + args.steps):  # interleaved: both sides see the same machine load
            for name, (step, model, opt) in runners.items():
                t0, c0 = time.perf_counter(), time.process_time()
                step(model, opt, batches[i % len(batches)], precision == "bf16")
                if i >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
        for name, ts in times.items():
            tok_s = B * T / statistics.median(ts)
            results[name, precision] = tok_s
            mfu = tok_s * fpt / peaks[precision]
            # With one thread, CPU time is the time the step would take alone: robust to other processes.
            extra = f", {B * T / statistics.median(cpu[name]):.0f} tok/s of CPU time" \
                if torch.get_num_threads() == 1 else ""
            print(f"{name:>12} {precision}: {tok_s:7.0f} tok/s  MFU {100 * mfu:4.1f}% of the {precision} peak "
                  f"(median of {len(ts)} steps, {min(ts):.2f}–{max(ts):.2f} s/step{extra})", flush=True)
    if "omnigpt" in runners and "transformers" in runners:
        for p in precisions:
            print(f"omnigpt / transformers, {p}: {results['omnigpt', p] / results['transformers', p]:.2f}×")
        if "bf16" in precisions:
            best = max(results.get(("omnigpt", "fp32"), 0.0), results["omnigpt", "bf16"])
            print(f"omnigpt best vs transformers bf16: {best / results['transformers', 'bf16']:.2f}× "
                  f"(target ≥ 1.5×); bf16 MFU {100 * results['omnigpt', 'bf16'] * fpt / peaks['bf16']:.1f}%")


if __name__ == "__main__":
    main()
