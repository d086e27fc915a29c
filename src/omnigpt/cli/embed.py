"""``omnigpt embed TEXT [TEXT ...]``: sentence embeddings with ``all-minilm-l6-v2`` (``checkpoints.encoders``).

Prints one JSON list of vectors (unit length, 384 numbers each), or with ``--similarity`` the N × N cosine
similarity matrix (a JSON list of rows). ``-`` reads the texts from stdin, one per line.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("texts", nargs="+", metavar="TEXT", help="a sentence (or - : one per stdin line)")
    p.add_argument("--model", default="all-minilm-l6-v2", help="all-minilm-l6-v2 (default)")
    p.add_argument("--similarity", action="store_true", help="print the cosine similarity matrix instead")
    p.add_argument("--decimals", type=int, default=6, help="round numbers to this many decimals (default 6)")


def run(args: argparse.Namespace) -> int:
    from omnigpt.checkpoints.encoders import embed_sentences
    from omnigpt.checkpoints.registry import from_pretrained
    from omnigpt.models.bert import BertModel

    texts = [line.rstrip("\r\n") for line in sys.stdin] if args.texts == ["-"] else list(args.texts)
    if not texts or any(not t for t in texts):
        raise ValueError("give non-empty texts")
    if not 0 <= args.decimals <= 10:
        raise ValueError("--decimals must be in [0, 10]")
    model, tokenizer, _ = from_pretrained(args.model)
    if not isinstance(model, BertModel):
        raise ValueError(f"{args.model} is not a sentence-embedding model ({type(model).__name__})")
    emb = embed_sentences(texts, model, tokenizer)  # (N, C), unit rows
    out = (emb @ emb.T) if args.similarity else emb
    print(json.dumps([[round(v, args.decimals) for v in row] for row in out.tolist()]))
    return 0
