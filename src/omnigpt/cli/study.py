"""``omnigpt study --quick|--full --out DIR``: GPT-1/2/3 and Llama on the same data and compute, attention heat maps,
the multimodal alignment stage; writes ``DIR/report.md`` (``omnigpt.study.run_study``)."""

from __future__ import annotations

import argparse
import shlex
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the default: about 5-10 minutes on 2 CPU cores")
    mode.add_argument("--full", action="store_true", help="wider models, longer runs, an lr sweep (hours on a CPU)")
    p.add_argument("--out", required=True, help="output directory (must not hold a study yet)")
    p.add_argument("--sweep", action="store_true", help="tune each family's lr on the middle size first (--quick)")
    p.add_argument("--workers", type=int, default=None, help="runs in parallel, one thread each (default 2)")
    p.add_argument("--no-multimodal", action="store_true", help="leave out the multimodal comparison")


def run(args: argparse.Namespace) -> int:
    from omnigpt.study import run_study

    over: dict = {}
    if args.sweep:
        over["sweep"] = True
    if args.workers is not None:
        over["workers"] = args.workers
    if args.no_multimodal:
        over["mm_steps"] = 0
    command = "omnigpt " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["study"] else None
    report = run_study(args.out, "full" if args.full else "quick", command=command, **over)
    print(f"wrote {report}")
    return 0
