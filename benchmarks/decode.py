"""Batch-1 (and batch-8) greedy decoding speed: omnigpt ``generate`` vs ``transformers`` ``generate``, one run.

GPT-2-small architecture with random weights (the same weights in both: converted omnigpt → HF, so their greedy
tokens agree in fp32), a 16-token prompt, 128 new tokens, fp32 and bf16 weights, plus omnigpt's weight-only int8
and int4 (``omnigpt.kernels.quantize``; a summary line compares each side's fastest batch-1 configuration, the last
one lists the matrix–vector plans ``omnigpt.kernels.matvec`` chose for batch 1).
Runs are interleaved (omnigpt, transformers, omnigpt, …) and the median is reported, because the machine is
shared and noisy. The memory-bandwidth bound is the measured copy bandwidth (bytes read + written per second)
divided by the weight bytes one decoding step reads (every matrix once: blocks + LM head).

Usage: ``python benchmarks/decode.py [--repeats 3] [--new-tokens 128] [--batch8-repeats 2] [--threads N]``
(on a machine shared with other jobs, ``--threads 1`` avoids OpenMP threads waiting on descheduled siblings).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time

import torch

from omnigpt import GPT, GPTConfig
from omnigpt.generate.decode import generate
from omnigpt.kernels.matvec import DEFAULT as MATVEC
from omnigpt.kernels.precision import describe_machine
from omnigpt.kernels.quantize import quantize


def copy_bandwidth(mb: int = 256, repeats: int = 10) -> float:
    """Bytes moved per second (read + write) copying a large buffer: the machine's memory speed."""
    src = torch.empty(mb * 2**20 // 4, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / min(times)


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of weights one decode step reads: everything but the embedding tables (one row each is read), with
    the LM head counted in full (tied to wte or not)."""
    seen, total = set(), 0
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t is None or id(t) in seen or name.endswith(("wte.weight", "wpe.weight")):
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    head = model.lm_head.weight
    if id(head) not in seen:  # tied: the shared matrix was skipped as wte
        total += head.numel() * head.element_size()
    return total


def to_hf(model: GPT):
    """The same weights in transformers' GPT2LMHeadModel (Conv1D stores (in, out): transpose)."""
    import transformers

    c = model.config
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=c.vocab_size, n_positions=c.block_size, n_embd=c.n_embd, n_layer=c.n_layer, n_head=c.n_head,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=0))
    state = {k: (v.t() if k.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight")) else v)
             for k, v in model.state_dict().items()}
    missing, _ = hf.load_state_dict(state, strict=False)
    assert not [k for k in missing if not k.endswith("attn.bias")], missing
    return hf.eval()


def run_omnigpt(model: GPT, ids: torch.Tensor, n: int) -> tuple[float, list[list[int]]]:
    t0 = time.perf_counter()
    out: list[list[int]] = [[] for _ in range(ids.shape[0])]
    for step in generate(model, ids, max_new_tokens=n, temperature=0):
        for row, t in zip(out, step.tokens, strict=True):
            row.append(t)
    return time.perf_counter() - t0, out


def run_hf(hf, ids: torch.Tensor, n: int) -> tuple[float, list[list[int]]]:
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                          do_sample=False, pad_token_id=0)
    return time.perf_counter() - t0, out[:, ids.shape[1]:].tolist()


def compare(label: str, ours: GPT, hf, ids: torch.Tensor, n: int, repeats: int,
            bound: float | None) -> tuple[float, float]:
    run_omnigpt(ours, ids[:, :4], 4), run_hf(hf, ids[:, :4], 4)  # warm-up
    t_ours, t_hf = [], []
    for _ in range(repeats):  # interleaved, so both see the same machine load
        dt, tok_ours = run_omnigpt(ours, ids, n)
        t_ours.append(dt)
        dt, tok_hf = run_hf(hf, ids, n)
        t_hf.append(dt)
    B = ids.shape[0]
    ours_tps, hf_tps = B * n / statistics.median(t_ours), B * n / statistics.median(t_hf)
    same = sum(a == b for a, b in zip(tok_ours, tok_hf, strict=True))
    line = (f"{label:<26} omnigpt {ours_tps:7.1f} tok/s   transformers {hf_tps:7.1f} tok/s   "
            f"ratio {ours_tps / hf_tps:4.2f}x")
    if bound:
        line += f"   bound {bound:5.1f} tok/s ({ours_tps / bound:4.0%} of it)"
    print(line + f"   same tokens {same}/{B}", flush=True)
    return ours_tps, hf_tps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch8-repeats", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--parts", nargs="+", default=["fp32", "bf16", "int8", "int4"],
                    choices=["fp32", "bf16", "int8", "int4"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's choice)")
    args = ap.parse_args()
    print(describe_machine(), flush=True)  # the CPU, its ISA and the peaks measured in this run
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    bw = copy_bandwidth()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, copy bandwidth {bw / 1e9:.1f} GB/s "
          f"(read + write)", flush=True)
    base = GPT(GPTConfig.from_name("gpt2")).eval()
    hf_base = to_hf(base)
    ids1 = torch.randint(0, base.config.vocab_size, (1, args.prompt_len))
    ids8 = torch.randint(0, base.config.vocab_size, (8, args.prompt_len))
    n = args.new_tokens
    best: dict[str, dict[str, float]] = {"omnigpt": {}, "transformers": {}}  # batch-1 tok/s by configuration
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        if name not in args.parts:
            continue
        ours, hf = _copy(base, dtype), hf_base.to(dtype)
        bound = bw / weight_bytes_per_token(ours)
        print(f"[{name}] weights read per token {weight_bytes_per_token(ours) / 1e6:.0f} MB", flush=True)
        best["omnigpt"][name], best["transformers"][name] = compare(f"batch 1, {name}", ours, hf, ids1, n,
                                                                     args.repeats, bound)
        if args.batch8_repeats > 0:  # 0 skips batch 8
            compare(f"batch 8, {name}", ours, hf, ids8, n, args.batch8_repeats, None)
    for bits, (dtype, name) in itertools.product((8, 4), ((torch.float32, "fp32"), (torch.bfloat16, "bf16"))):
        if f"int{bits}" not in args.parts:
            continue
        hf = hf_base.to(dtype)
        q = quantize(_copy(base, dtype), bits=bits)
        bound = bw / weight_bytes_per_token(q)
        print(f"[int{bits} weights (bf16 activations), rest of the model in {name}] weights read per token "
              f"{weight_bytes_per_token(q) / 1e6:.0f} MB", flush=True)
        ours_tps, hf_tps = compare(f"batch 1, int{bits} vs HF {name}", q, hf, ids1, n, args.repeats, bound)
        best["omnigpt"][f"int{bits} + {name}"] = ours_tps
        best["transformers"][name] = max(hf_tps, best["transformers"].get(name, 0.0))
    # The headline: each side's fastest batch-1 configuration, measured in this run.
    (o_cfg, o_tps), (h_cfg, h_tps) = (max(best[s].items(), key=lambda kv: kv[1]) for s in ("omnigpt", "transformers"))
    print(f"batch 1, best vs best: omnigpt ({o_cfg}) {o_tps:.1f} tok/s vs transformers ({h_cfg}) {h_tps:.1f} tok/s"
          f" = {o_tps / h_tps:.2f}x (target >= 2x)", flush=True)
    print(f"omnigpt's batch-1 matvec plans (in x out/dtype/bias: row blocks, 1 = F.linear): {MATVEC.plans}")


def _copy(model: GPT, dtype: torch.dtype) -> GPT:
    m = GPT(model.config).eval()
    m.load_state_dict(model.state_dict())
    return m.to(dtype)


if __name__ == "__main__":
    main()
