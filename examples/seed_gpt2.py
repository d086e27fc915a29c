"""The GPT-2 snippet from the article, for real: OpenAI's GPT-2 tokenizer and a GPT-2 model in HF format.

No GPT-2 weights ship in any package registry, so this script first creates a checkpoint: a GPT-2-shaped
model (small by default, ``--full`` for the real 124M shape) with GPT-2's initialisation, saved with
``save_pretrained`` next to OpenAI's exact GPT-2 BPE (built offline from the ``gpt2.tiktoken`` file). The
directory is in Hugging Face's format, so ``transformers.GPT2Model.from_pretrained`` reads it too; with real
weights downloaded once (``hf download gpt2 --local-dir ./gpt2``) pass ``--path ./gpt2`` and nothing changes.

Usage: ``python examples/seed_gpt2.py [--path DIR] [--full]``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from omnigpt import GPT, GPT2Model, GPT2Tokenizer, GPTConfig, gpt2_tokenizer, save_pretrained


def make_checkpoint(path: Path, full: bool) -> None:
    """A random GPT-2 (tokenizer included) saved where the snippet will load it."""
    torch.manual_seed(0)
    config = GPTConfig.from_name("gpt2") if full else GPTConfig.from_name("gpt2", n_layer=2, n_head=4, n_embd=128)
    save_pretrained(GPT(config), path, tokenizer=gpt2_tokenizer())
    print(f"created {path} ({config.num_params():,} parameters, random weights)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, help="an existing GPT-2 directory (default: create one)")
    parser.add_argument("--full", action="store_true", help="create the full 124M GPT-2 shape")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="omnigpt-gpt2-") as tmp:
        path = args.path or Path(tmp) / "gpt2"
        if args.path is None:
            make_checkpoint(path, args.full)

        # --- the article's snippet -----------------------------------------------------------------------------
        tokenizer = GPT2Tokenizer.from_pretrained(path)
        model = GPT2Model.from_pretrained(path)
        inputs = tokenizer("Hello, my dog is cute", return_tensors="pt")
        outputs = model(**inputs)
        print(outputs)
        # --------------------------------------------------------------------------------------------------------

    print(f"\ninput_ids {inputs['input_ids'].tolist()}  (GPT-2's ids: [[15496, 11, 616, 3290, 318, 13779]])")
    print(f"last_hidden_state {tuple(outputs.last_hidden_state.shape)}  (batch, tokens, n_embd)")


if __name__ == "__main__":
    main()
