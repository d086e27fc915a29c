"""``omnigpt prepare``: tokenize corpora into memory-mapped token shards (``omnigpt.data.prepare_data``).

    omnigpt prepare --source shakespeare --tokenizer char --out data/shakespeare-char
    omnigpt prepare --source 'notes/*.txt' --source chats.jsonl --tokenizer bpe:4096 --out data/mine
    omnigpt prepare configs/shakespeare-char.yaml        # the data section of a training recipe
"""

from __future__ import annotations

import argparse
import json

from omnigpt.data.shards import MANIFEST, DataSpec, prepare_data
from omnigpt.data.sources import BUILTIN


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", nargs="?", help="a training recipe whose data: section to prepare")
    p.add_argument("--source", action="append", default=[],
                   help=f"built-in corpus ({', '.join(BUILTIN)}), text file, glob or .jsonl (repeatable)")
    p.add_argument("--tokenizer", help="char | gpt2 | bpe:VOCAB | a saved tokenizer directory (default gpt2)")
    p.add_argument("--out", help="output directory")
    p.add_argument("--val-fraction", type=float, help="share of documents held out (default 0.1)")
    p.add_argument("--split-seed", type=int)
    p.add_argument("--text-field", help="field of JSON Lines records holding the text (default: text)")
    p.add_argument("--force", action="store_true", help="rebuild even if the directory is already prepared")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    if args.recipe:
        from omnigpt.apps import load_recipe

        spec = load_recipe(args.recipe).data
    else:
        spec = DataSpec()
        if not args.out:
            raise ValueError("give --out DIR (or a recipe)")
    for key, value in [("sources", args.source or None), ("tokenizer", args.tokenizer), ("dir", args.out),
                       ("val_fraction", args.val_fraction), ("split_seed", args.split_seed),
                       ("text_field", args.text_field)]:
        if value is not None:
            setattr(spec, key, value)
    from pathlib import Path

    mf = Path(spec.dir) / MANIFEST
    if mf.is_file() and not args.force:
        have = json.loads(mf.read_text()).get("spec")
        if have == spec.fingerprint():
            print(f"{spec.dir}: already prepared (use --force to rebuild)")
            return 0
        raise ValueError(f"{spec.dir} holds data prepared from {have}; use --force to replace it")
    out = prepare_data(spec, progress=not args.quiet)
    m = json.loads((out / MANIFEST).read_text())
    for split, c in m["splits"].items():
        print(f"{split}: {c['documents']:,} documents, {c['tokens']:,} tokens ({m['dtype']}), {c['bytes']:,} bytes, "
              f"{len(c['shards'])} shard(s)")
    print(f"vocabulary {m['vocab_size']:,}; written to {out}")
    return 0
