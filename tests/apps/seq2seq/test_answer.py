"""A chat model fine-tuned to answer with a label (issue 23: Qwen + LoRA on sentiment-zh): the ``*-answer`` pair
sets keep their classification set's splits, a ``seq2seq`` run on one is a ``text-classification`` model whose
pipeline asks the trained question and scores the labels as zero-shot does, and ``omnigpt eval`` scores it as a
classifier beside the base model asked the same question. SmolLM2 stands in for Qwen (small, offline)."""

from __future__ import annotations

import pytest
import torch
from app_helpers import COMMON

from omnigpt.apps import load_recipe
from omnigpt.apps.seq2seq.task import Seq2SeqTask
from omnigpt.data.textsets import load_classification, load_pairs, split_items
from omnigpt.generate.classify import answer_forms, label_probs
from omnigpt.hf.pipelines import pipeline
from omnigpt.text.task_card import prompt_ids
from omnigpt.train.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")


def test_answer_pairs_keep_the_classification_split():
    labels, items = load_classification("sentiment-zh")
    for split in ("train", "test"):
        pairs, want = split_items(load_pairs("sentiment-zh-answer"), split), split_items(items, split)
        assert [(p.id, p.source, p.target) for p in pairs] == [(x.id, x.text, x.label) for x in want]
    assert {p.target for p in load_pairs("sentiment-zh-answer")} == set(labels) == {"positive", "negative"}


@pytest.mark.e2e
def test_answer_run_is_a_classifier(tmp_path):
    out = tmp_path / "run"
    r = load_recipe(None, {**COMMON, "task": "seq2seq", "out_dir": str(out), "batch_size": 2, "max_steps": 2,
                           "eval_interval": 2, "eval_limit": 2, "lr": 1e-4,
                           "final_eval": False,  # a full pass over the ~870 val pairs costs a minute here
                           "data": {"dataset": "sentiment-zh-answer", "limit": 4, "max_source_tokens": 24,
                                    "max_target_tokens": 4, "max_new_tokens": 4, "generate": 0},
                           "model": {"init_from": "smollm2-135m-instruct", "lora": {"rank": 2, "alpha": 4}}})
    train(r)
    clf = pipeline("sentiment-analysis", model=out)
    assert clf.card["labels"] == ["negative", "positive"] and clf.card["pipeline"] == "text-classification"
    assert "Answer with one of: negative, positive." in clf.card["instruction"]  # {labels} filled in once
    text = "这个手机很好用"
    got = clf(text, top_k=None)[0]
    want = label_probs(clf.model, prompt_ids(clf.card, clf.tokenizer, text, clf.template),
                       [answer_forms(clf.tokenizer, label) for label in clf.labels])
    assert {x["label"]: x["score"] for x in got} == pytest.approx(dict(zip(clf.labels, want.tolist(), strict=True)))
    with pytest.raises(ValueError, match="trained with its own labels"):
        pipeline("sentiment-analysis", model=out, labels=["good", "bad"])
    result = Seq2SeqTask.evaluate_run(out / "checkpoints" / "step_000002", tmp_path, limit=4)
    assert result["items"] == 4 and 0 <= result["accuracy"] <= 1 and (tmp_path / "confusion.png").exists()
    assert {"majority", "tfidf_char_1_3_logreg", "smollm2-135m-instruct_zero_shot"} <= set(result["baselines"])
    assert torch.is_tensor(want) and abs(float(want.sum()) - 1) < 1e-5
