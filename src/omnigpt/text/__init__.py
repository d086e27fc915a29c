"""Text and media front ends: tokenizers (``tokenizer``: char, byte-level BPE, GPT-1; ``gpt2_vocab``: OpenAI's exact
GPT-2 vocabulary rebuilt offline) and the image/audio processors that turn media into model inputs
(``processors``)."""
