"""The lm application's pipeline: ``omnigpt.pipeline("text-generation")`` on a saved model gives transformers'
output shapes and the same text as ``generate_text``; a language model is not a text classifier."""

from __future__ import annotations

import pytest

from omnigpt.hf.pipelines import pipeline

pytestmark = pytest.mark.usefixtures("one_thread")


def test_text_generation_shapes(tmp_path):
    from omnigpt.checkpoints.pretrained import save_pretrained
    from omnigpt.config import GPTConfig
    from omnigpt.generate.text import generate_text
    from omnigpt.models.gpt import GPT
    from omnigpt.text.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text("abcdefgh ", special_tokens=["<|endoftext|>"])
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    save_pretrained(model, tmp_path / "lm", tok)
    gen = pipeline("text-generation", model=tmp_path / "lm")
    one = gen("abc", max_new_tokens=5)
    assert one == [{"generated_text": "abc" + generate_text(model, tok, "abc", max_new_tokens=5, temperature=0.0)}]
    two = gen(["ab", "cd"], max_new_tokens=3, return_full_text=False)
    assert len(two) == 2 and all(len(x) == 1 and set(x[0]) == {"generated_text"} for x in two)
    with pytest.raises(ValueError, match="not a text classifier"):
        pipeline("text-classification", model=tmp_path / "lm")
