"""``omnigpt transcribe FILE [FILE ...]``: speech to text with Whisper (``generate.whisper.transcribe``).

``--model`` is ``whisper-tiny.en`` (default, English), ``whisper-base`` (99 languages; detected unless
``--language``) or a Whisper checkpoint directory. Audio is WAV/FLAC/OGG at any sample rate (resampled to 16 kHz);
recordings longer than 30 s are decoded window by window. ``--beam N`` is beam search (1 = greedy). Prints the
text of each file, one per line, or with ``--json`` one JSON object per file (text, language, duration, seconds
taken, segments).
"""

from __future__ import annotations

import argparse
import json
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="audio file (WAV, FLAC, OGG)")
    p.add_argument("--model", default="whisper-tiny.en",
                   help="whisper-tiny.en (default), whisper-base, or a Whisper checkpoint directory")
    p.add_argument("--beam", type=int, default=1, help="beam size (default 1: greedy)")
    p.add_argument("--language", default=None, help="language code for multilingual models (default: detect)")
    p.add_argument("--json", action="store_true", help="one JSON object per file")


def run(args: argparse.Namespace) -> int:
    from omnigpt.checkpoints.registry import from_pretrained
    from omnigpt.generate.whisper import transcribe
    from omnigpt.models.whisper import Whisper

    if not 1 <= args.beam <= 16:
        raise ValueError("--beam must be in [1, 16]")
    model, tokenizer, _ = from_pretrained(args.model)
    if not isinstance(model, Whisper):
        raise ValueError(f"{args.model} is not a Whisper model ({type(model).__name__})")
    for path in args.files:
        t0 = time.perf_counter()
        result = transcribe(model, tokenizer, path, language=args.language, beam_size=args.beam)
        seconds = time.perf_counter() - t0
        if args.json:
            print(json.dumps({"file": path, "text": result.text.strip(), "language": result.language,
                              "duration": round(result.duration, 3), "seconds": round(seconds, 3),
                              "segments": [{"start": s.start, "end": s.end, "text": s.text.strip()}
                                           for s in result.segments]}, ensure_ascii=False), flush=True)
        else:
            print(result.text.strip(), flush=True)
    return 0
