"""``omnigpt <command>``: one entry point; each command is a thin module with ``add_arguments`` and ``run``.

Commands are imported lazily so ``omnigpt --help`` stays fast and a command's heavy imports cost only its users.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module with add_arguments(parser) and run(args) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("omnigpt.cli.demo", "the main job: build, train, evaluate and sample a GPT on CPU"),
    "generate": ("omnigpt.cli.generate", "stream a completion (--prompt) or a chat reply (--chat) from a model"),
    "prepare": ("omnigpt.cli.prepare", "tokenize corpora into memory-mapped token shards with a manifest"),
    "train": ("omnigpt.cli.train", "train a GPT or a multimodal model from a YAML recipe (torchrun, --resume)"),
    "eval": ("omnigpt.cli.eval", "loss/perplexity/bits per byte, or multimodal task metrics, of a checkpoint"),
    "prepare-mm": ("omnigpt.cli.prepare_mm", "build an image/speech + text dataset from offline assets"),
    "serve": ("omnigpt.cli.serve", "OpenAI-compatible HTTP API and chat page for models (directories or names)"),
    "transcribe": ("omnigpt.cli.transcribe", "speech to text with Whisper (whisper-tiny.en, whisper-base)"),
    "classify-image": ("omnigpt.cli.classify_image", "ImageNet top-k classes of an image (mobilenet-v2)"),
    "detect": ("omnigpt.cli.detect", "COCO objects in an image: boxes, labels, scores (ssd-mobilenet-v2-coco)"),
    "embed": ("omnigpt.cli.embed", "sentence embeddings or their cosine similarities (all-minilm-l6-v2)"),
    "run": ("omnigpt.cli.run", "one pipeline call: sentiment, summarization, translation, text generation, ..."),
    "study": ("omnigpt.cli.study", "GPT-1/2/3/Llama at equal compute, attention heat maps: a regenerable report"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omnigpt", description="GPT-1/2/3 and multimodal transformers")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    argv = sys.argv[1:] if argv is None else argv
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if argv and argv[0] == name:  # only import the command being run
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except (ValueError, OSError) as e:  # user errors (bad input, missing file, unknown name): one line, no traceback
        print(f"omnigpt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
