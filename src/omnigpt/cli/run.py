"""``omnigpt run TASK --model M TEXT ...``: one pipeline call from the shell (``omnigpt.pipeline``), one JSON line.

    omnigpt run sentiment-analysis --model runs/apps/sentiment-zh "这个手机很好用"
    omnigpt run summarization --model runs/apps/summarize-bbc --file article.txt
    omnigpt run translation_en_to_es --model runs/apps/translate-en-es "In the beginning was the Word."
    omnigpt run text-generation "The capital of France is" --max-new-tokens 8

Texts come from the arguments, or from ``--file`` (one text per file), or from stdin (one text per line) when
neither is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _options(prog: str = "omnigpt run TASK") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("texts", nargs="*", help="input texts (default: one per line from stdin)")
    p.add_argument("--model", help="a run directory, checkpoint directory or offline model name")
    p.add_argument("--file", nargs="+", help="text files, one input each")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: where the model loads)")
    p.add_argument("--max-new-tokens", type=int, help="generation budget (seq2seq, text generation)")
    p.add_argument("--top-k", type=int, default=1, help="text classification: labels per text (0: all)")
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", help="sentiment-analysis, text-classification, summarization, translation_XX_to_YY, "
                                "text-generation, ...")
    # options and texts in any order ("--model M text" and "text --model M"): parsed intermixed in run()
    p.add_argument("rest", nargs=argparse.REMAINDER, help="texts and options: " + " ".join(
        a.option_strings[0] if a.option_strings else a.dest for a in _options()._actions[1:]))


def run(args: argparse.Namespace) -> int:
    from omnigpt.hf.pipelines import pipeline, resolve_task

    name, _ = resolve_task(args.task)  # an unknown task fails before any model loads
    args = _options(f"omnigpt run {args.task}").parse_intermixed_args(args.rest, argparse.Namespace(task=args.task))
    texts = list(args.texts)
    for f in args.file or []:
        texts.append(Path(f).read_text(encoding="utf-8"))
    if not texts:
        texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    pipe = pipeline(args.task, model=args.model, device=args.device)
    kwargs = {}
    if name == "text-classification":
        kwargs["top_k"] = args.top_k or None
    elif args.max_new_tokens is not None:
        kwargs["max_new_tokens"] = args.max_new_tokens
    print(json.dumps(pipe(texts, **kwargs), ensure_ascii=False))
    return 0
