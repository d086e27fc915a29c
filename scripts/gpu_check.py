"""GPU checks for omnigpt, run once on a CUDA machine (``scripts/gpu_check.sh`` calls this file).

Parts, each ending in one line ``PASS|FAIL|SKIP <part>: <numbers>``:

1. device  — GPU name, compute capability, torch and CUDA versions, bf16 support.
2. train   — one bf16-autocast training step of GPT-2 small (124M; batch 8 × 1024 random tokens, labels = inputs,
             fused AdamW) with ``scaled_dot_product_attention`` restricted to the flash / memory-efficient kernels
             (SDPA raises instead of falling back to the math kernel). Checks the loss is finite and ≈ ln(vocab) at
             init; prints step time, tokens/s and TFLOP/s (6·N·tokens + 12·L·C·T·tokens, nanoGPT's estimate).
3. decode  — greedy batch-1 decoding of 128 tokens with ``omnigpt.generate.decode.generate`` (fp32 and bf16
             weights): tokens/s, and the KV-cache tokens equal a full forward's argmax (teacher-forced, fp32).
4. ddp     — with N > 1 GPUs, ``torchrun --standalone --nproc_per_node=N -m omnigpt train configs/demo.yaml`` overridden
             to tiny-gpt2, 5 steps, on a small generated JSON Lines corpus (nothing is downloaded).

Without CUDA every part after the first prints SKIP and the exit status is 0. ``--cpu-smoke`` runs parts 2–4 on the
CPU with tiny-gpt2 sizes (part 4 as 2 gloo processes) to prove the code paths. The exit status is 1 when a part fails.
Each part has a watchdog (``faulthandler``): a hung part prints its stack and ends the process.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "src") not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO / "src"))

# bf16 dense peak (TFLOP/s, no sparsity) of a few cards, for the MFU column only.
PEAK_BF16 = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}

results: list[tuple[str, str]] = []


def report(status: str, part: str, msg: str) -> None:
    results.append((status, part))
    print(f"{status} {part}: {msg}", flush=True)


def run_part(part: str, fn: Callable[[], None], timeout_s: float) -> None:
    """Run one part under a watchdog; an exception is a FAIL line with its traceback, never the end of the run."""
    faulthandler.dump_traceback_later(timeout_s, exit=True)  # a hung kernel or collective: stack dump, exit 1
    try:
        fn()
    except Exception as e:  # noqa: BLE001 — every failure becomes this part's FAIL line
        traceback.print_exc()
        report("FAIL", part, f"{type(e).__name__}: {e}")
    finally:
        faulthandler.cancel_dump_traceback_later()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------------------
# 1. device


def part_device(device: torch.device) -> None:
    cuda_build = torch.version.cuda or "none (CPU build)"
    if device.type != "cuda":
        report("PASS", "device", f"cpu smoke: torch {torch.__version__}, CUDA build {cuda_build}, "
                                 f"{torch.get_num_threads()} threads")
        return
    name = torch.cuda.get_device_name(device)
    major, minor = torch.cuda.get_device_capability(device)
    props = torch.cuda.get_device_properties(device)
    bf16 = torch.cuda.is_bf16_supported()
    sdpa = {"flash": torch.backends.cuda.flash_sdp_enabled(),
            "efficient": torch.backends.cuda.mem_efficient_sdp_enabled()}
    msg = (f"{name}, capability {major}.{minor}, {props.multi_processor_count} SMs, "
           f"{props.total_memory / 2**30:.1f} GiB, {torch.cuda.device_count()} GPU(s); torch {torch.__version__}, "
           f"CUDA {cuda_build}, cuDNN {torch.backends.cudnn.version()}; bf16 supported: {bf16}; SDPA enabled: {sdpa}")
    report("PASS" if bf16 else "FAIL", "device", msg)


# ------------------------------------------------------------------------------------------------------------
# 2. train


def sdpa_only(backends: list) -> AbstractContextManager:
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(backends)


def part_train(device: torch.device, smoke: bool) -> None:
    from torch.nn.attention import SDPBackend

    from omnigpt import GPT, GPTConfig

    torch.manual_seed(0)
    cfg = GPTConfig.from_name("tiny-gpt2" if smoke else "gpt2")
    B, T = (4, cfg.block_size) if smoke else (8, 1024)
    warmup, timed = (1, 2) if smoke else (3, 5)
    model = GPT(cfg).to(device)
    model.train()
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1, fused=True)
        fused = True
    except (RuntimeError, ValueError):  # fused AdamW on a CPU build without it (CUDA always has it)
        if device.type == "cuda":
            raise
        opt, fused = torch.optim.AdamW(model.parameters(), lr=6e-4, weight_decay=0.1), False
    gen = torch.Generator(device="cpu").manual_seed(0)
    idx = torch.randint(0, cfg.vocab_size, (B, T), generator=gen).to(device)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = model(idx, labels=idx).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    # Which fused kernel runs: try flash alone, then memory-efficient alone, on the real shapes (a fwd + bwd of one
    # row, no optimizer step). SDPA raises "No available kernel" when the restricted backend does not apply.
    backend = "cpu (bf16 autocast: omnigpt's fp32-backward flash path)"
    ctx: Callable[[], AbstractContextManager] = nullcontext
    if device.type == "cuda":
        errors = []
        for label, kinds in (("flash", [SDPBackend.FLASH_ATTENTION]), ("efficient", [SDPBackend.EFFICIENT_ATTENTION])):
            try:
                with sdpa_only(kinds), torch.autocast("cuda", dtype=torch.bfloat16):
                    model(idx[:1], labels=idx[:1]).loss.backward()
                sync(device)
                backend = label
                break
            except RuntimeError as e:
                errors.append(f"{label}: {str(e).splitlines()[0][:200]}")
        else:
            raise RuntimeError("neither SDPA flash nor memory-efficient attention applies: " + "; ".join(errors))
        model.zero_grad(set_to_none=True)
        ctx = lambda: sdpa_only([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION])  # noqa: E731
        torch.cuda.reset_peak_memory_stats(device)

    losses = []
    with ctx():
        for _ in range(warmup):
            losses.append(step())
        sync(device)
        t0 = time.perf_counter()
        for _ in range(timed):
            losses.append(step())
        sync(device)
        dt = (time.perf_counter() - t0) / timed

    # Attention kernels the profiler saw in one more step (information only; CUPTI may be unavailable).
    kernels = ""
    if device.type == "cuda":
        try:
            from torch.profiler import ProfilerActivity, profile

            with ctx(), profile(activities=[ProfilerActivity.CUDA]) as prof:
                losses.append(step())
                sync(device)
            names = {e.key for e in prof.key_averages()}
            att = sorted(n for n in names if any(s in n.lower() for s in ("flash", "fmha", "efficient_attention")))
            kernels = f"; attention kernels: {', '.join(n[:60] for n in att[:3]) or 'none seen'}"
        except Exception as e:  # noqa: BLE001
            kernels = f"; profiler unavailable ({type(e).__name__})"

    values = torch.stack(losses).float().cpu().tolist()
    n_params = model.num_params() - model.transformer.wpe.weight.numel()  # wpe is a lookup, not a matmul
    tokens = B * T
    flops = 6 * n_params * tokens + 12 * cfg.n_layer * cfg.n_embd * T * tokens  # fwd + bwd, causal not halved
    tflops = flops / dt / 1e12
    ln_v = math.log(cfg.vocab_size)
    finite = all(math.isfinite(v) for v in values)
    close = abs(values[0] - ln_v) < 0.5
    peak = next((p for k, p in PEAK_BF16.items() if device.type == "cuda" and k in torch.cuda.get_device_name()), None)
    mfu = f" (MFU {100 * tflops / peak:.0f}% of {peak:.0f})" if peak else ""
    mem = f", peak mem {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB" if device.type == "cuda" else ""
    msg = (f"{cfg.name} {n_params:,} params (wpe excluded), batch {B}×{T}, SDPA backend {backend}, "
           f"AdamW fused={fused}; loss at init {values[0]:.3f} (ln {cfg.vocab_size} = {ln_v:.3f}), "
           f"last {values[-1]:.3f}, all finite: {finite}; step {dt * 1e3:.1f} ms, {tokens / dt:,.0f} tokens/s, "
           f"{tflops:.1f} TFLOP/s{mfu}{mem}{kernels}")
    report("PASS" if finite and close else "FAIL", "train", msg)


# ------------------------------------------------------------------------------------------------------------
# 3. decode


def part_decode(device: torch.device, smoke: bool) -> None:
    from omnigpt import GPT, GPTConfig
    from omnigpt.generate.decode import generate

    torch.manual_seed(0)
    cfg = GPTConfig.from_name("tiny-gpt2" if smoke else "gpt2")
    P, N = (8, 32) if smoke else (16, 128)
    model = GPT(cfg).to(device).eval()
    prompt = torch.randint(0, cfg.vocab_size, (P,), generator=torch.Generator().manual_seed(1)).tolist()

    def decode(n: int) -> tuple[list[int], float]:
        sync(device)
        t0 = time.perf_counter()
        out: list[int] = []
        with generate(model, [prompt], max_new_tokens=n, temperature=0.0) as g:
            for s in g:
                out.append(s.tokens[0])
        sync(device)
        return out, time.perf_counter() - t0

    # Correctness in fp32 without TF32: the cached tokens against one full (uncached) forward over prompt + output;
    # position P-1+i must predict token i. A mismatch counts only when it is not an fp32 near-tie (gap > 1e-3).
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        decode(8)  # warm-up: allocator, kernels' first launch
        toks, dt32 = decode(N)
        with torch.no_grad():
            full = model(torch.tensor([prompt + toks], device=device)).logits[0, P - 1 : P - 1 + N].float()  # (N, V)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    ref = full.argmax(-1).tolist()
    picked = full.gather(-1, torch.tensor(toks, device=device)[:, None])[:, 0]  # (N,) logit of each decoded token
    gaps = (full.max(-1).values - picked).tolist()
    mismatch = [i for i in range(N) if ref[i] != toks[i]]
    real = [i for i in mismatch if gaps[i] > 1e-3]
    first = 8
    ok_first = ref[:first] == toks[:first]

    model.to(torch.bfloat16)
    decode(8)
    toks16, dt16 = decode(N)
    msg = (f"{cfg.name} batch 1, prompt {P}, {N} new tokens greedy: fp32 {N / dt32:.1f} tokens/s "
           f"({dt32 / N * 1e3:.2f} ms/token), bf16 {N / dt16:.1f} tokens/s ({dt16 / N * 1e3:.2f} ms/token); "
           f"KV-cache == full-forward argmax: first {first} {'equal' if ok_first else 'DIFFER'}, "
           f"{N - len(mismatch)}/{N} equal, {len(mismatch) - len(real)} near-ties, {len(real)} real mismatches"
           f"{f' at {real[:5]}' if real else ''}")
    report("PASS" if not real and len(toks16) == N else "FAIL", "decode", msg)


# ------------------------------------------------------------------------------------------------------------
# 4. ddp


def write_corpus(path: Path, docs: int = 64, words: int = 400) -> None:
    """A deterministic JSON Lines corpus of pseudo-English (ids ``corpus.jsonl:N``: the val split is fixed)."""
    rng = random.Random(0)
    vocab = ["the", "king", "queen", "of", "and", "to", "a", "in", "that", "is", "my", "lord", "thou", "with",
             "not", "his", "be", "your", "for", "have", "what", "he", "shall", "will", "love", "sir", "good"]
    with path.open("w", encoding="utf-8") as f:
        for _ in range(docs):
            text = " ".join(rng.choice(vocab) for _ in range(words)).capitalize() + "."
            f.write(json.dumps({"text": text}) + "\n")


def part_ddp(device: torch.device, smoke: bool, timeout_s: float) -> None:
    nproc = 2 if smoke else min(torch.cuda.device_count(), 8)
    if not smoke and nproc < 2:
        report("SKIP", "ddp", f"one GPU: DDP step skipped ({torch.cuda.device_count()} visible)")
        return
    with tempfile.TemporaryDirectory(prefix="gpu_check_ddp_") as tmp:
        tmp_path = Path(tmp)
        write_corpus(tmp_path / "corpus.jsonl")
        out_dir = tmp_path / "run"
        overrides = [f"--out_dir={out_dir}", f"--data.dir={tmp_path / 'data'}",
                     f"--data.sources=[{tmp_path / 'corpus.jsonl'}]", "--data.tokenizer=char",
                     "--model.preset=tiny-gpt2", "--max_steps=5", f"--batch_size={4 * nproc}", "--warmup=1",
                     "--log_interval=1", "--eval_interval=5", "--eval_limit=2048", "--checkpoint_interval=5",
                     "--progress=false", "--max_minutes=3"]
        if smoke:
            overrides.append("--device=cpu")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "omnigpt", "train", str(REPO / "configs" / "demo.yaml"), *overrides]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH"))
                                                          if p), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        if smoke:
            env["CUDA_VISIBLE_DEVICES"] = ""
        print(f"ddp: torchrun --standalone --nproc_per_node={nproc} -m omnigpt train configs/demo.yaml "
              + " ".join(overrides), flush=True)
        t0 = time.perf_counter()
        # Its own process group, so that a timeout ends torchrun's workers too, not only the launcher.
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

        def stop(signum: int, frame: object) -> None:  # the shell's overall timeout: take the workers along
            os.killpg(proc.pid, signal.SIGKILL)
            sys.exit(128 + signum)

        previous = signal.signal(signal.SIGTERM, stop)
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            print((stdout + stderr)[-3000:], flush=True)
            report("FAIL", "ddp", f"torchrun did not finish in {timeout_s:.0f} s (its processes were killed)")
            return
        finally:
            signal.signal(signal.SIGTERM, previous)
        wall = time.perf_counter() - t0
        log = stdout + stderr
        summary = None
        start = stdout.rfind("\n{")
        if start >= 0 or stdout.startswith("{"):
            try:
                summary = json.loads(stdout[start + 1 if start >= 0 else 0 :])
            except json.JSONDecodeError:
                summary = None
        if proc.returncode != 0 or summary is None:
            print(log[-4000:], flush=True)
            report("FAIL", "ddp", f"torchrun exit {proc.returncode} after {wall:.1f} s"
                                  f"{'' if summary else ', no JSON summary from rank 0'}")
            return
        dtype_line = next((ln for ln in log.splitlines() if ln.startswith("dtype ")), "dtype ?")
        ok = summary.get("step") == 5 and not summary.get("interrupted") and summary.get("nonfinite_steps") == 0
        train_loss, val_loss = summary.get("train_loss"), summary.get("val_loss")
        ok = ok and train_loss is not None and math.isfinite(train_loss)
        msg = (f"{nproc} processes ({'gloo, CPU' if smoke else 'NCCL'}), {summary.get('step')} steps of tiny-gpt2, "
               f"{summary.get('tokens')} tokens, train loss {train_loss}, val loss {val_loss}, {dtype_line}, "
               f"checkpoint {'saved' if summary.get('checkpoint') else 'missing'}; {wall:.1f} s wall")
        report("PASS" if ok and summary.get("checkpoint") else "FAIL", "ddp", msg)


# ------------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="run parts 2-4 on CPU with tiny-gpt2 sizes")
    ap.add_argument("--parts", default="device,train,decode,ddp", help="comma-separated subset to run")
    ap.add_argument("--part-timeout", type=float, default=120.0, help="watchdog seconds for each of parts 1-3")
    ap.add_argument("--ddp-timeout", type=float, default=150.0, help="seconds for the torchrun run")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    t_start = time.perf_counter()

    cuda = torch.cuda.is_available()
    if args.cpu_smoke:
        device = torch.device("cpu")
    elif cuda:
        device = torch.device("cuda", 0)
        torch.cuda.set_device(device)
    else:
        device = None

    if device is None:
        report("SKIP", "device", f"no CUDA device (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
                                 "run with --cpu-smoke to exercise the code paths on CPU")
        for part in ("train", "decode", "ddp"):
            report("SKIP", part, "no CUDA device")
        print("SUMMARY: CUDA parts skipped (CPU-only machine)", flush=True)
        return 0

    if "device" in parts:
        run_part("device", lambda: part_device(device), args.part_timeout)
    if "train" in parts:
        run_part("train", lambda: part_train(device, args.cpu_smoke), args.part_timeout)
    if "decode" in parts:
        run_part("decode", lambda: part_decode(device, args.cpu_smoke), args.part_timeout)
    if "ddp" in parts:
        # The watchdog outlasts the subprocess's own timeout, so a hung torchrun is reported, not dumped.
        run_part("ddp", lambda: part_ddp(device, args.cpu_smoke, args.ddp_timeout), args.ddp_timeout + 30)

    failed = [p for s, p in results if s == "FAIL"]
    counts = {s: sum(1 for r, _ in results if r == s) for s in ("PASS", "FAIL", "SKIP")}
    print(f"SUMMARY: {counts['PASS']} pass, {counts['FAIL']} fail, {counts['SKIP']} skip"
          f"{' (failed: ' + ', '.join(failed) + ')' if failed else ''}; {time.perf_counter() - t_start:.1f} s",
          flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
