"""Metrics, figures and same-run baselines of the language applications (apps/common/metrics.py wrappers,
apps/common/figures.py, apps/common/baselines.py): each wrapper against values worked out by hand or by an independent
implementation, the artefacts as valid PNG / Markdown, the baselines on small slices of the real sets."""

from __future__ import annotations

import math
import statistics
from collections import Counter

import pytest
from PIL import Image

from omnigpt.apps.common import baselines, figures
from omnigpt.apps.common.metrics import (
    bleu_whitespace,
    classification_scores,
    confusion,
    rouge_scores,
    translation_scores,
)
from omnigpt.data import textsets
from omnigpt.data.textsets import load_classification, load_pairs, split_items

bible = pytest.mark.skipif(not textsets.bible_available(),
                           reason="needs Debian packages sword-text-web, sword-text-sparv, libsword-utils")


# ------------------------------------------------------------------------------------------------ classification


def test_classification_scores_by_hand():
    targets = ["a", "a", "b", "b"]
    predictions = ["a", "b", "b", "b"]
    # a: precision 1/1, recall 1/2 -> F1 2/3; b: precision 2/3, recall 2/2 -> F1 0.8; macro = (2/3 + 0.8) / 2
    got = classification_scores(predictions, targets, ["a", "b"])
    assert got["accuracy"] == pytest.approx(0.75)
    assert got["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert confusion(predictions, targets, ["a", "b"]) == [[1, 1], [0, 2]]  # rows = true label
    assert confusion(predictions, targets, ["b", "a"]) == [[2, 0], [1, 1]]  # in the order of `labels`
    # A label never predicted nor true scores F1 0 and still counts in the macro average.
    assert classification_scores(predictions, targets, ["a", "b", "c"])["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 3)
    # A prediction outside the labels is simply wrong.
    assert classification_scores(["a", "zzz"], ["a", "b"], ["a", "b"])["accuracy"] == 0.5


def test_classification_bad_input():
    with pytest.raises(ValueError, match="2 predictions for 1"):
        classification_scores(["a", "b"], ["a"], ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        classification_scores([], [], ["a"])
    with pytest.raises(ValueError, match="not in labels"):
        confusion(["a"], ["q"], ["a", "b"])


# ------------------------------------------------------------------------------------------------- ROUGE / BLEU


def test_rouge_by_hand():
    pred, ref = "the cat sat on the mat", "the cat was on the mat"
    got = rouge_scores([pred], [ref])
    # unigrams: 5 of 6 shared; bigrams: the-cat, on-the, the-mat = 3 of 5; LCS "the cat on the mat" = 5 of 6
    assert got == pytest.approx({"rouge1": 500 / 6, "rouge2": 60.0, "rougeL": 500 / 6})
    # The mean over pairs, and the Porter stemmer: "running"/"runs" both stem to "run".
    two = rouge_scores([pred, "dogs running"], [ref, "dog runs"])
    assert two == pytest.approx({"rouge1": (500 / 6 + 100) / 2, "rouge2": 80.0, "rougeL": (500 / 6 + 100) / 2})
    assert rouge_scores([""], ["something"]) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    with pytest.raises(ValueError):
        rouge_scores([], [])


def _chrf(hyp: str, ref: str, order: int = 6, beta: float = 2.0) -> float:
    """chrF (Popović 2015) as sacreBLEU defines it: character n-gram precision and recall (spaces removed), each
    averaged over n = 1..order, then the F-beta of the averages."""
    h, r = hyp.replace(" ", ""), ref.replace(" ", "")
    precisions, recalls = [], []
    for n in range(1, order + 1):
        hc = Counter(h[i:i + n] for i in range(len(h) - n + 1))
        rc = Counter(r[i:i + n] for i in range(len(r) - n + 1))
        if hc and rc:
            match = sum((hc & rc).values())
            precisions.append(match / sum(hc.values()))
            recalls.append(match / sum(rc.values()))
    p, rec = statistics.mean(precisions), statistics.mean(recalls)
    return 100 * (1 + beta**2) * p * rec / (beta**2 * p + rec)


def test_translation_scores_by_hand():
    # "the cat sat on the mat" vs "the cat sat on a mat": precisions 5/6, 3/5, 2/4, 1/3, equal lengths (BP 1)
    got = translation_scores(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert got["bleu_sacrebleu"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25)
    assert got["bleu_sacrebleu"] == pytest.approx(53.7285, abs=1e-4)
    assert got["chrf"] == pytest.approx(_chrf("the cat sat on the mat", "the cat sat on a mat"))
    assert translation_scores(["the cat sat"], ["the cat sits"])["chrf"] == pytest.approx(_chrf("the cat sat",
                                                                                                "the cat sits"))
    # Corpus level: statistics summed over sentences (the repo's unsmoothed Papineni BLEU agrees when no order is 0).
    hyps = ["the quick brown fox jumps over the dog", "a man walks in the park today"]
    refs = ["the quick brown fox jumped over the lazy dog", "a man walks in the park"]
    assert translation_scores(hyps, refs)["bleu_sacrebleu"] == pytest.approx(bleu_whitespace(hyps, refs))
    same = "four words or more"  # BLEU-4 needs a 4-gram: a shorter sentence scores 0 unsmoothed
    assert translation_scores([same], [same]) == pytest.approx({"bleu_sacrebleu": 100.0, "chrf": 100.0})


# ------------------------------------------------------------------------------------------------------- figures


def test_confusion_png(tmp_path):
    path = figures.confusion_png([[5, 1], [2, 7]], ["negative", "positive"], tmp_path / "sub" / "c.png", "test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= 200
    with pytest.raises(ValueError, match="3 labels"):
        figures.confusion_png([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "x.png")


def test_sample_table_escapes_pipes_and_newlines(tmp_path):
    rows = [{"source": "a | b", "reference": "line one\nline two", "output": "ok"}, {"source": "s", "output": "o"}]
    text = figures.sample_table(rows, tmp_path / "samples.md").read_text()
    lines = text.splitlines()
    assert lines[0] == "| source | reference | output |" and lines[1] == "|---|---|---|"
    assert lines[2] == "| a \\| b | line one line two | ok |"
    assert len(lines) == 4 and lines[3].startswith("| s |")
    # Every row has the same number of unescaped cell separators.
    assert {line.replace("\\|", "").count("|") for line in lines} == {4}
    with pytest.raises(ValueError):
        figures.sample_table([], tmp_path / "empty.md")


# ----------------------------------------------------------------------------------------------------- baselines


def test_simple_baselines():
    assert baselines.majority_class(["a", "b", "b"], 2) == ["b", "b"]
    assert baselines.majority_class(["b", "a"], 1) == ["a"]  # ties -> first in sorted order
    assert baselines.lead_1(["First one here. Second sentence.", "No end punctuation at all",
                             "“Quoted.” Then more."], 3) == ["First one here.", "No end punctuation", "“Quoted."]
    assert baselines.lead_1(["Short. Longer second sentence."], 10) == ["Short."]
    assert baselines.copy_source(("x", "y")) == ["x", "y"]
    with pytest.raises(ValueError):
        baselines.lead_1(["x"], 0)
    with pytest.raises(ValueError):
        baselines.majority_class([], 3)


def test_tfidf_logreg_on_a_bbc_slice():
    labels, items = load_classification("topic-bbc")
    train, test = split_items(items, "train")[:400], split_items(items, "test")[:100]
    pred = baselines.tfidf_logreg([x.text for x in train], [x.label for x in train], [x.text for x in test],
                                  "word", (1, 1), C=4.0)
    scores = classification_scores(pred, [x.label for x in test], labels)
    assert scores["accuracy"] > 0.85  # chance is 0.2; the full train split reaches ~0.98
    assert baselines.tfidf_logreg([x.text for x in train], [x.label for x in train], [], "word", (1, 1)) == []
    with pytest.raises(ValueError, match="two classes"):
        baselines.tfidf_logreg(["a b", "a c"], ["x", "x"], ["a"])


def test_classification_baselines_sentiment_val():
    labels, items = load_classification("sentiment-zh")
    got = baselines.classification_baselines("sentiment-zh", "val")
    assert set(got) == {"majority", "tfidf_char_1_3_logreg"}
    val = split_items(items, "val")
    # Majority: "negative" (9,031 of 17,363 reviews), so its accuracy is the share of negatives in val.
    assert got["majority"]["accuracy"] == pytest.approx(sum(x.label == "negative" for x in val) / len(val))
    assert got["tfidf_char_1_3_logreg"]["accuracy"] > got["majority"]["accuracy"] + 0.2
    with pytest.raises(ValueError, match="sentiment-zh, topic-bbc"):
        baselines.classification_baselines("nope")


def test_pair_baselines_summarize_slice():
    pairs = load_pairs("summarize-bbc")
    got = baselines.pair_baselines("summarize-bbc", "test", limit=40)
    test = split_items(pairs, "test")[:40]
    median = statistics.median(len(p.target.split()) for p in split_items(pairs, "train"))
    expected = rouge_scores(baselines.lead_1([p.source for p in test], round(median)), [p.target for p in test])
    assert got == {"lead_1": pytest.approx(expected)}
    assert 10 < got["lead_1"]["rouge1"] < 60 and got["lead_1"]["rouge2"] < got["lead_1"]["rouge1"]
    with pytest.raises(ValueError, match="summarize-bbc"):
        baselines.pair_baselines("summarize-cnn")


@bible
def test_pair_baselines_copy_source_is_a_low_floor():
    got = baselines.pair_baselines("translate-en-es", "test", limit=200)["copy_source"]
    assert 0 < got["bleu_sacrebleu"] < 10 and 10 < got["chrf"] < 40  # shared names and numbers only
    assert not math.isnan(got["bleu_sacrebleu"])
