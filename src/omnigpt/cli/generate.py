"""``omnigpt generate --model DIR --prompt TEXT``: stream a completion to stdout as it is produced.

Any checkpoint: a GPT-family model streams text; a multimodal one (``model_type: omnigpt-multimodal``) answers a
question about ``--image PATH`` and/or ``--audio PATH`` (``omnigpt generate --model runs/mm-fmnist --image
shirt.png --prompt "What is this?"``).

``--prompt -`` reads prompts from stdin, one per line, and completes each in turn (one completion per line of
output). Sampling controls map one to one onto ``omnigpt.generate.text.stream_text``; ``--temperature 0`` is greedy.
"""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model directory (omnigpt or Hugging Face GPT-2 / GPT-1 format)")
    p.add_argument("--prompt", required=True, help="prompt text, or - to read prompts from stdin, one per line")
    p.add_argument("--image", action="append", default=[], help="multimodal models: an image file (repeatable)")
    p.add_argument("--audio", action="append", default=[], help="multimodal models: an audio file (repeatable)")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable); not printed")
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    p.add_argument("--ignore-eos", action="store_true", help="keep going past the end-of-text token")
    p.add_argument("--context-overflow", choices=["error", "slide"], default="error",
                   help="when prompt + new tokens exceed the context: fail (default) or slide the window")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    quant = p.add_mutually_exclusive_group()
    quant.add_argument("--int8", action="store_true", help="weight-only int8 linears (faster decoding on CPU)")
    quant.add_argument("--int4", action="store_true",
                       help="weight-only int4 linears, groups of 32 (fastest on CPU, less accurate than int8)")
    p.add_argument("--stats", action="store_true", help="print tokens/s to stderr")


def run(args: argparse.Namespace) -> int:
    import torch

    from omnigpt.checkpoints.pretrained import load_pretrained, model_type
    from omnigpt.checkpoints.state import resolve_checkpoint
    from omnigpt.generate.text import stream_text
    from omnigpt.kernels.quantize import quantize
    from omnigpt.text.tokenizer import load_tokenizer

    try:
        args.model = resolve_checkpoint(args.model)  # a run directory means its newest checkpoint
        if model_type(args.model) == "omnigpt-multimodal":
            return _multimodal(args)
        if args.image or args.audio:
            raise ValueError(f"{args.model} is a text model ({model_type(args.model)}): --image/--audio need a "
                             f"multimodal checkpoint")
        model = load_pretrained(args.model, dtype=torch.bfloat16 if args.dtype == "bfloat16" else torch.float32)
        tokenizer = load_tokenizer(args.model)
    except OSError as e:  # not a directory, unreadable file: one line, no traceback
        print(f"omnigpt generate: error: {e}", file=sys.stderr)
        return 2
    if args.int8 or args.int4:
        quantize(model, bits=4 if args.int4 else 8)
    prompts = [line.rstrip("\r\n") for line in sys.stdin] if args.prompt == "-" else [args.prompt]
    controls = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                    context_overflow=args.context_overflow)
    if args.ignore_eos:
        controls["stop_token_ids"] = []
    try:
        for prompt in prompts:
            t0, chars = time.perf_counter(), 0
            if prompt:  # an empty line gets an empty completion (there is nothing to condition on)
                for delta in stream_text(model, tokenizer, prompt, stop=args.stop, **controls):
                    sys.stdout.write(delta)
                    sys.stdout.flush()  # stream: show each piece as soon as it is decoded
                    chars += len(delta)
            sys.stdout.write("\n")
            sys.stdout.flush()
            if args.stats:
                print(f"[{chars} characters in {time.perf_counter() - t0:.2f} s]", file=sys.stderr)
    except BrokenPipeError:  # e.g. piped into `head`: the reader is gone, which is not an error
        sys.stderr.close()
    return 0


def _multimodal(args: argparse.Namespace) -> int:
    """Answer ``--prompt`` about the given images / clips with a ``MultimodalGPT`` checkpoint."""
    from omnigpt.checkpoints.pretrained import load_pretrained
    from omnigpt.generate.multimodal import answer
    from omnigpt.text.processors import Processor

    if not (args.image or args.audio):
        raise ValueError(f"{args.model} is a multimodal model: give --image PATH and/or --audio PATH")
    model, processor = load_pretrained(args.model), Processor.from_pretrained(args.model)
    text = answer(model, processor, args.prompt, images=args.image, audio=args.audio,
                  max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    print(text)
    return 0
