"""The classify application (issue 13): a tiny classifier on a small slice of topic-bbc (``classify_run``,
tests/apps/conftest.py) must overfit what it saw, its pipeline must return transformers' shapes with the task card
it was trained with, and bad input must fail with a message naming it; ``omnigpt eval`` on application runs (the
classify and the seq2seq run) and ``omnigpt run``; recipe errors of the language applications.

The seq2seq task is tests/apps/seq2seq/test_seq2seq.py. Metrics and baselines against the reference packages are in
tests/apps/common/test_app_metrics.py, the data sets and splits in tests/test_textsets.py.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from app_helpers import TINY

from omnigpt.apps import load_recipe
from omnigpt.hf.pipelines import pipeline
from omnigpt.text.task_card import classification_ids, task_card
from omnigpt.train.recipe import RecipeError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_bad_inputs_name_the_input(classify_run):
    out, _ = classify_run
    clf = pipeline("text-classification", model=out)
    with pytest.raises(ValueError, match="input 1: empty text"):
        clf(["fine", "   "])
    with pytest.raises(ValueError, match="input 0: expected text"):
        clf([3])
    with pytest.raises(ValueError, match="no inputs"):
        clf([])
    with pytest.raises(ValueError, match="trained with its own labels"):
        pipeline("text-classification", model=out, labels=["a", "b"])
    with pytest.raises(OSError, match="missing' is not a local file or directory, not an offline model name"):
        pipeline("text-classification", model=str(out / "missing"))


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


@pytest.mark.e2e
def test_omnigpt_run_cli(classify_run):
    out, _ = classify_run
    cmd = [sys.executable, "-m", "omnigpt", "run", "sentiment-analysis", "--model", str(out), "first text",
           "second text"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    got = json.loads(done.stdout)
    assert len(got) == 2 and all(set(g) == {"label", "score"} for g in got)
    bad = subprocess.run([sys.executable, "-m", "omnigpt", "run", "nope", "x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown task 'nope'; valid tasks:" in bad.stderr
