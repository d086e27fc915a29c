"""``omnigpt generate --model DIR|NAME --prompt TEXT``: stream a completion to stdout as it is produced.

``--model`` is a checkpoint directory, a ``.gguf`` file or an offline name (``smollm2-135m-instruct``, fetched and
checked on first use). ``--chat TEXT`` instead of ``--prompt`` renders TEXT as a user turn through the model's chat
template (the GGUF file's, the directory's ``chat_template.jinja``/``tokenizer_config.json``, else plain
"User:/Assistant:" lines) and prints the assistant's reply: ``omnigpt generate --model smollm2-135m-instruct
--chat "What is the capital of France?"``.

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
from pathlib import Path
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="model directory (omnigpt or Hugging Face GPT-2 / GPT-1 format), .gguf file, or offline name "
                        "(smollm2-135m-instruct)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="prompt text, or - to read prompts from stdin, one per line")
    what.add_argument("--chat", help="a user message answered through the chat template (- : one per stdin line)")
    p.add_argument("--system", default=None, help="with --chat: a system message (default: the template's)")
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
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                   help="weights' dtype (auto: bf16 on a GPU with native bf16, else fp32)")
    quant = p.add_mutually_exclusive_group()
    quant.add_argument("--int8", action="store_true", help="weight-only int8 linears (faster decoding on CPU)")
    quant.add_argument("--int4", action="store_true",
                       help="weight-only int4 linears, groups of 32 (fastest on CPU, less accurate than int8)")
    p.add_argument("--compile", action="store_true",
                   help="run the decode step as one torch.compile graph over a static cache (~40 s to compile, "
                        "then the fastest batch-1 decode on CPU)")
    p.add_argument("--stats", action="store_true", help="print tokens/s to stderr")


def run(args: argparse.Namespace) -> int:

    from omnigpt.checkpoints.registry import load
    from omnigpt.generate.text import stream_text
    from omnigpt.kernels.precision import weights_dtype
    from omnigpt.kernels.quantize import quantize
    from omnigpt.models.gpt import GPT
    from omnigpt.models.multimodal import MultimodalGPT

    try:
        model, tokenizer, _, kind = load(args.model, dtype=weights_dtype(args.dtype))
    except OSError as e:  # not a directory, unreadable file: one line, no traceback
        print(f"omnigpt generate: error: {e}", file=sys.stderr)
        return 2
    if isinstance(model, MultimodalGPT):
        return _multimodal(args, model, tokenizer)
    if args.image or args.audio:
        raise ValueError(f"{args.model} is a text model ({kind}): --image/--audio need a multimodal checkpoint")
    if not isinstance(model, GPT) or not hasattr(tokenizer, "decode"):
        raise ValueError(f"{args.model} is not a text generator ({type(model).__name__}); see `omnigpt transcribe`, "
                         f"`omnigpt classify-image`, `omnigpt embed`")
    if args.int8 or args.int4:
        quantize(model, bits=4 if args.int4 else 8)
    text = args.prompt if args.prompt is not None else args.chat
    prompts = [line.rstrip("\r\n") for line in sys.stdin] if text == "-" else [text]
    if args.chat is not None:
        prompts, tokenizer, stop = _chat_prompts(args, tokenizer, prompts)
        args.stop = [*args.stop, *stop]
    controls = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed,
                    context_overflow=args.context_overflow, compile=args.compile)
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


class _SpecialAware:
    """A tokenizer whose ``encode`` parses special tokens: a rendered chat prompt's markers are tokens."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, allowed_special=True)
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if getattr(self.tokenizer, "add_bos", False) and bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        return ids

    def decode(self, ids: Any) -> str:
        return self.tokenizer.decode(ids)


def _chat_prompts(args: argparse.Namespace, tokenizer: Any, messages: list[str]) -> tuple[list[str], Any, list[str]]:
    """Each message rendered as one user turn through the model's chat template; the template's stop strings."""
    from omnigpt.text.chat_template import DEFAULT_CHAT_TEMPLATE, DEFAULT_STOP, ChatTemplate, load_chat_template

    source = getattr(tokenizer, "chat_template", None)
    eos_id = tokenizer.eos_token_id
    eos = tokenizer.decode([eos_id]) if eos_id is not None else ""
    if source:
        template = ChatTemplate(source, eos_token=eos)
    elif Path(args.model).is_dir():
        template = load_chat_template(args.model, eos_token=eos)
    else:
        template = ChatTemplate(DEFAULT_CHAT_TEMPLATE, stop=list(DEFAULT_STOP), eos_token=eos)
    specials = getattr(tokenizer, "special_tokens", None) or {}
    rendered = []
    for m in messages:
        found = next((t for t in specials if t in m or (args.system and t in args.system)), None)
        if found is not None:
            raise ValueError(f"the message contains {found!r}, a special token of this model's chat format")
        turns = ([{"role": "system", "content": args.system}] if args.system else []) + \
            [{"role": "user", "content": m}]
        rendered.append(template.render(turns) if m else "")
    return rendered, _SpecialAware(tokenizer), template.stop


def _multimodal(args: argparse.Namespace, model: Any, processor: Any) -> int:
    """Answer ``--prompt`` about the given images / clips with a ``MultimodalGPT`` checkpoint."""
    from omnigpt.generate.multimodal import answer

    if not (args.image or args.audio):
        raise ValueError(f"{args.model} is a multimodal model: give --image PATH and/or --audio PATH")
    text = answer(model, processor, args.prompt, images=args.image, audio=args.audio,
                  max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    print(text)
    return 0
