"""``omnigpt prepare-mm RECIPE --out DIR``: build a multimodal dataset from real offline assets
(``omnigpt.data.multimodal``): caption JSONL + LLaVA-style conversations + media files + ``manifest.json``.

    omnigpt prepare-mm fashion-mnist --out data/fashion-mnist
    omnigpt prepare-mm emoji --out data/emoji --size 32
    omnigpt prepare-mm asterisk --out data/asterisk                    # real speech, evaluation only
    omnigpt prepare-mm synth-speech --out data/synth --per-text 16 --sample-rate 8000
    omnigpt prepare-mm synth-speech --out data/piper --per-text 10 --sample-rate 8000 --piper 1 --flite 0 \
        --warp piper:0.95:1.3                                            # neural voice (pip install 'omnigpt[speech]')
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    from omnigpt.data.multimodal import recipes

    p.add_argument("recipe", choices=sorted(recipes()), help="which dataset to build")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--limit", type=int, help="fashion-mnist / emoji: at most this many items (per split)")
    p.add_argument("--size", type=int, help="emoji: image side in pixels (default 64)")
    p.add_argument("--subsets", nargs="+", help="asterisk: prompt folders (default: digits letters)")
    p.add_argument("--texts", help="synth-speech: a text file, one utterance per line (default: Asterisk prompts)")
    p.add_argument("--per-text", type=int, help="synth-speech: clips per text, each a different voice (default 20)")
    p.add_argument("--sample-rate", type=int, help="synth-speech: output rate (8000 = telephone channel)")
    p.add_argument("--seed", type=int, help="synth-speech: voice draw seed")
    p.add_argument("--piper", type=float, help="synth-speech: share of clips from piper's neural voice (default 0)")
    p.add_argument("--flite", type=float, help="synth-speech: share of clips from flite (default 0.3; rest espeak-ng)")
    p.add_argument("--warp", action="append", metavar="ENGINE:LO:HI",
                   help="synth-speech: pitch+formant factor range for an engine's clips, e.g. piper:0.95:1.3")
    p.add_argument("--force", action="store_true", help="rebuild even if DIR already has a manifest")


def run(args: argparse.Namespace) -> int:
    from omnigpt.data.multimodal import prepare_multimodal, recipes

    out = Path(args.out)
    if (out / "manifest.json").is_file() and not args.force:
        have = json.loads((out / "manifest.json").read_text())
        print(f"{out}: already holds the {have.get('recipe')} recipe (use --force to rebuild)")
        return 0
    options = {"limit": args.limit, "size": args.size, "per_text": args.per_text, "sample_rate": args.sample_rate,
               "seed": args.seed, "subsets": args.subsets, "piper": args.piper, "flite": args.flite}
    if args.warp:
        try:
            options["warp"] = {e: [float(lo), float(hi)] for e, lo, hi in (w.split(":") for w in args.warp)}
        except ValueError as e:
            raise ValueError(f"--warp takes ENGINE:LO:HI, e.g. piper:0.95:1.3, got {args.warp}") from e
    if args.texts:
        lines = Path(args.texts).read_text(encoding="utf-8").splitlines()
        options["texts"] = [ln.strip() for ln in lines if ln.strip()]
    options = {k: v for k, v in options.items() if v is not None}
    accepted = inspect.signature(recipes()[args.recipe]).parameters
    if unknown := [k for k in options if k not in accepted]:
        raise ValueError(f"recipe {args.recipe} does not take {', '.join('--' + k.replace('_', '-') for k in unknown)}")
    manifest = prepare_multimodal(args.recipe, out, **options)
    counts = ", ".join(f"{k}: {v:,}" for k, v in manifest["counts"].items())
    print(f"{args.recipe} → {out} ({counts})")
    return 0
