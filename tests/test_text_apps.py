"""The language applications (issue 13): the classify and seq2seq tasks, task cards, ``omnigpt.pipeline``,
``omnigpt eval`` on application runs and ``omnigpt run``.

Tiny models on small slices of the real sets (topic-bbc, summarize-wiki): they must overfit what they saw, the
pipeline must return transformers' shapes, and bad input must fail with a message naming it. Metrics and baselines
against the reference packages are in tests/test_app_metrics.py, the data sets and splits in tests/test_textsets.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from omnigpt.apps import load_recipe
from omnigpt.hf.pipelines import pipeline, resolve_task
from omnigpt.text.task_card import SEP, classification_ids, prompt_ids, task_card
from omnigpt.train.recipe import RecipeError
from omnigpt.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"preset": "tiny-gpt2", "n_embd": 64, "n_head": 4, "block_size": 96}
COMMON = {"dtype": "float32", "matmul_plan": "off", "progress": False, "log_interval": 1000,
          "checkpoint_interval": 10000, "keep_checkpoints": 1, "warmup": 5, "weight_decay": 0.0, "lr": 3e-3,
          "min_lr_ratio": 1.0}


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "run"
    r = load_recipe(None, {**COMMON, "task": "classify", "out_dir": str(out), "batch_size": 8, "max_steps": 60,
                           "eval_interval": 60, "eval_limit": 16,
                           "data": {"dataset": "topic-bbc", "limit": 8, "max_tokens": 32, "tokenizer": "bpe:600"},
                           "model": {"config": TINY}})
    result = train(r)
    return out, result


@pytest.fixture(scope="module")
def seq2seq_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("s2s") / "run"
    r = load_recipe(None, {**COMMON, "task": "seq2seq", "out_dir": str(out), "batch_size": 4, "max_steps": 80,
                           "eval_interval": 80, "eval_limit": 8,
                           "data": {"dataset": "summarize-wiki", "limit": 4, "max_source_tokens": 24,
                                    "max_target_tokens": 8, "max_new_tokens": 10, "generate": 2,
                                    "tokenizer": "bpe:600"},
                           "model": {"config": TINY}})
    result = train(r)
    return out, result


def test_classifier_overfits_its_training_items(classify_run):
    from omnigpt.data.textsets import load_classification, split_items

    out, _ = classify_run
    clf = pipeline("text-classification", model=out)
    labels, items = load_classification("topic-bbc")
    seen = split_items(items, "train")[:8]
    got = clf([x.text for x in seen])
    assert [g["label"] for g in got] == [x.label for x in seen]
    assert all(set(g) == {"label", "score"} and 0.5 < g["score"] <= 1.0 for g in got)
    assert clf.labels == labels  # the BBC folder names, in the saved id2label order


def test_classifier_pipeline_shapes_and_card(classify_run):
    out, _ = classify_run
    clf = pipeline("sentiment-analysis", model=out)  # HF's alias
    one = clf("Shares rose after the results.")
    assert isinstance(one, list) and len(one) == 1 and set(one[0]) == {"label", "score"}
    every = clf(["a", "b"], top_k=None)
    assert len(every) == 2 and len(every[0]) == 5 and abs(sum(x["score"] for x in every[0]) - 1) < 1e-5
    assert [x["score"] for x in every[0]] == sorted((x["score"] for x in every[0]), reverse=True)
    card = task_card(clf.model.config)
    assert card["pipeline"] == "text-classification" and card["max_tokens"] == 32
    ids = classification_ids(card, clf.tokenizer, "word " * 100)
    assert len(ids) == 32 and ids[-1] == clf.tokenizer.token_to_id("<|endoftext|>")


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


def test_eval_writes_metrics_baselines_and_pictures(classify_run, seq2seq_run, tmp_path):
    from omnigpt.cli.main import main

    for (run, _), name in ((classify_run, "cls"), (seq2seq_run, "s2s")):
        out = tmp_path / name
        assert main(["eval", str(run), "--limit", "12", "--out", str(out)]) == 0
        ev = json.loads((out / "eval.json").read_text())
        assert ev["items"] == 12 and ev["split"] == "test"
        if name == "cls":
            assert {"accuracy", "macro_f1"} <= set(ev) and set(ev["baselines"]) >= {"majority"}
            assert any(k.startswith("tfidf_") for k in ev["baselines"])
            assert (out / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert {"rouge1", "rouge2", "rougeL"} <= set(ev) and "lead_1" in ev["baselines"]
            table = (out / "samples.md").read_text()
            assert table.startswith("| source | reference | omnigpt |") and table.count("\n") == 14


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


def test_bad_inputs_name_the_input(classify_run):
    out, _ = classify_run
    clf = pipeline("text-classification", model=out)
    with pytest.raises(ValueError, match="input 1: empty text"):
        clf(["fine", "   "])
    with pytest.raises(ValueError, match="input 0: expected text"):
        clf([3])
    with pytest.raises(ValueError, match="no inputs"):
        clf([])
    with pytest.raises(ValueError, match="needs model=RUN"):
        pipeline("text-classification")
    with pytest.raises(OSError, match="missing' is not a local file or directory, not an offline model name"):
        pipeline("text-classification", model=str(out / "missing"))


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


def test_recipe_errors_name_the_key(tmp_path):
    base = {"task": "classify", "out_dir": str(tmp_path), "data": {"dataset": "topic-bbc"}, "max_steps": 10}
    with pytest.raises(RecipeError, match="data.dataset: unknown 'imdb'; classification sets: sentiment-zh, topic"):
        load_recipe(None, {**base, "data": {"dataset": "imdb"}, "model": {"config": TINY}})
    with pytest.raises(RecipeError, match="exactly one of model.config"):
        load_recipe(None, {**base, "model": {}})
    with pytest.raises(RecipeError, match="exactly one of model.config"):
        load_recipe(None, {**base, "model": {"config": TINY, "init_from": "smollm2-135m-instruct"}})
    with pytest.raises(RecipeError, match="model.lora: adapters need a pretrained base"):
        load_recipe(None, {**base, "model": {"config": TINY, "lora": {"rank": 4}}})
    with pytest.raises(RecipeError, match="must contain {text}"):
        load_recipe(None, {"task": "seq2seq", "out_dir": str(tmp_path), "model": {"config": TINY}, "max_steps": 10,
                           "data": {"dataset": "summarize-bbc", "instruction": "Summarize."}})
    with pytest.raises(RecipeError, match="text-pair sets: summarize-bbc"):
        load_recipe(None, {"task": "seq2seq", "out_dir": str(tmp_path), "model": {"config": TINY}, "max_steps": 10,
                           "data": {"dataset": "translate-en-fr"}})


def test_omnigpt_run_cli(classify_run):
    out, _ = classify_run
    cmd = [sys.executable, "-m", "omnigpt", "run", "sentiment-analysis", "--model", str(out), "first text",
           "second text"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    got = json.loads(done.stdout)
    assert len(got) == 2 and all(set(g) == {"label", "score"} for g in got)
    bad = subprocess.run([sys.executable, "-m", "omnigpt", "run", "nope", "x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown task 'nope'; valid tasks:" in bad.stderr


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


def test_speech_recognition_pipeline_on_a_real_recording(tmp_path):
    """Whisper tiny.en through the pipeline: HF's {"text"} shape; a 0-byte file and an empty array are errors
    naming the input; silence transcribes to nothing (the no-speech rule)."""
    import numpy as np

    wav = "/usr/share/asterisk/sounds/en_US_f_Allison/conf-invalid.wav"
    asr = pipeline("automatic-speech-recognition")
    assert asr(wav) == {"text": "That is not a valid conference number. Please try again."}
    assert asr([np.zeros(16000, dtype=np.float32)]) == [{"text": ""}]
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(ValueError, match=r"input 0 \(.*empty.wav\): .*cannot read audio"):
        asr(str(tmp_path / "empty.wav"))
    with pytest.raises(ValueError, match="input 0 \\(array\\): audio must be a non-empty"):
        asr(np.zeros(0, dtype=np.float32))
