"""The seq2seq application (issue 13): a tiny summarizer on a small slice of summarize-wiki must overfit what it
saw and prompt as trained; the translation task card and its language checks; a chat-format card renders what the
chat template gives. The trained run is ``seq2seq_run`` (tests/apps/conftest.py); ``omnigpt eval`` on it is
tests/apps/classify/test_classify.py::test_eval_writes_metrics_baselines_and_pictures, metrics and baselines are in
tests/apps/common/test_app_metrics.py, the data sets and splits in tests/test_textsets.py.
"""

from __future__ import annotations

import pytest

from omnigpt.hf.pipelines import pipeline, resolve_task
from omnigpt.text.task_card import SEP, prompt_ids

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.e2e
def test_seq2seq_overfits_and_prompts_as_trained(seq2seq_run):
    from omnigpt.data.textsets import load_pairs, split_items

    out, result = seq2seq_run
    assert result.eval["val_loss"] > 0 and "val_rougeL" in result.eval
    summarize = pipeline("summarization", model=out)
    pairs = split_items(load_pairs("summarize-wiki"), "train")[:4]
    got = summarize([p.source for p in pairs])
    tok = summarize.tokenizer
    want = [tok.decode(tok.encode(p.target)[:8]).strip() for p in pairs]
    assert [g["summary_text"] for g in got] == want
    ids = prompt_ids(summarize.card, tok, pairs[0].source)
    assert ids[-1] == tok.token_to_id(SEP) and len(ids) == 25  # 24 source tokens + <|sep|>


@pytest.mark.e2e
def test_translation_card_and_language_checks(seq2seq_run):
    out, _ = seq2seq_run
    with pytest.raises(ValueError, match="trained for 'summarization', not 'translation'"):
        pipeline("translation_en_to_es", model=out)
    with pytest.raises(ValueError, match="unknown language code 'xx'; known: en, es"):
        pipeline("translation_en_to_xx", model=out)
    with pytest.raises(ValueError, match="expected translation_XX_to_YY"):
        resolve_task("translation_en")
    with pytest.raises(ValueError, match=r"unknown task 'sumarization'; valid tasks: .*summarization.*text-generation"):
        pipeline("sumarization", model=out)


def test_chat_format_prompt_is_the_chat_template_rendering():
    """A chat-format card renders exactly what apply_chat_template gives for the same user turn."""
    from omnigpt.text.chat_template import ChatTemplate
    from omnigpt.text.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz <>|_/\n.:TSW", special_tokens=["<|endoftext|>"])
    template = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}" \
               "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    card = {"pipeline": "summarization", "format": "chat", "max_source_tokens": 5, "max_new_tokens": 4,
            "instruction": "sum: {text}"}
    ids = prompt_ids(card, tok, "abcdefghij", template)
    want = ChatTemplate(template).render([{"role": "user", "content": "sum: abcde"}], True)
    assert tok.decode(ids) == want == "<|user|>sum: abcde\n<|assistant|>"
