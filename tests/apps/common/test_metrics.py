"""Task metrics against hand-computed values, brute-force references and sacrebleu."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from omnigpt.apps.common.metrics import (
    accuracy,
    bleu_whitespace,
    edit_distance,
    exact_match,
    normalize_text,
    recall_at_k,
    word_error_rate,
)

HYPS = ["the cat sat on the mat", "a quick brown fox jumps"]
REFS = ["the cat is on the mat", "a quick brown fox jumps over"]


def test_accuracy_and_exact_match():
    assert accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert exact_match(["A Sneaker.", "bag"], ["a sneaker", "coat"]) == 0.5
    assert exact_match(["A Sneaker."], ["a sneaker"], normalize=False) == 0.0
    assert normalize_text("  O'Clock, A.M.!  ") == "o'clock a m"
    with pytest.raises(ValueError, match="2 predictions for 1"):
        accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="empty"):
        exact_match([], [])


def test_recall_at_k_counts_ties_for_the_query_and_matches_the_torch_version():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.2, 0.9], [0.3, 0.8, 0.1]])
    # query 0: target 0 ranks first; query 1: target 1 ties with item 0, one item above → rank 1; query 2: rank 2
    assert recall_at_k(scores, ks=(1, 2, 3)) == {1: 1 / 3, 2: 2 / 3, 3: 1.0}
    assert recall_at_k(scores, targets=[0, 2, 1], ks=(1,)) == {1: 1.0}
    from omnigpt.models.contrastive import recall_at_k as torch_recall

    g = torch.Generator().manual_seed(0)
    q, gal = torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g)
    sim = (torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(gal, dim=-1).T).numpy()
    assert recall_at_k(sim, ks=(1, 5)) == pytest.approx(torch_recall(q, gal, ks=(1, 5)))


def test_bleu_whitespace_hand_computed():
    # Counts summed over both sentences (hand-counted):
    #   1-grams 5/6 + 5/5 = 10/11, 2-grams 3/5 + 4/4 = 7/9, 3-grams 1/4 + 3/3 = 4/7, 4-grams 0/3 + 2/2 = 2/5;
    #   candidate length 11 < reference length 12 → brevity penalty exp(1 − 12/11).
    expected = 100 * math.exp(1 - 12 / 11) * (10 / 11 * 7 / 9 * 4 / 7 * 2 / 5) ** 0.25
    assert bleu_whitespace(HYPS, REFS) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(57.8947, abs=1e-3)
    assert bleu_whitespace(["a b c d e"], ["a b c d e"]) == pytest.approx(100.0)
    assert bleu_whitespace(["the cat sat on the mat"], ["the cat is on the mat"]) == 0.0  # no 4-gram match
    # Clipping: "the the the the" matches "the" at most twice.
    assert bleu_whitespace(["the the the the the the the"], [["the cat the", "the"]]) == 0.0


def test_bleu_whitespace_multiple_references_clip_to_max_and_pick_closest_length():
    hyp = ["the cat the cat on the mat"]
    refs = [["the cat is on the mat", "there is a cat on the mat the cat"]]
    sacrebleu = pytest.importorskip("sacrebleu", reason="sacrebleu (test reference, pinned in constraints.txt)")

    ref = sacrebleu.corpus_bleu(hyp, [[r[0] for r in refs], [r[1] for r in refs]], tokenize="none",
                                smooth_method="none", force=True)
    assert bleu_whitespace(hyp, refs) == pytest.approx(ref.score, abs=1e-9)


def test_bleu_whitespace_matches_sacrebleu_on_random_corpora():
    sacrebleu = pytest.importorskip("sacrebleu", reason="sacrebleu (test reference, pinned in constraints.txt)")
    rng = random.Random(0)
    words = ["a", "b", "c", "d", "e", "f", "the", "cat", "dog", "sat", "on", "mat"]
    for _ in range(20):
        refs = [" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(5)]
        hyps = [" ".join(w if rng.random() < 0.7 else rng.choice(words) for w in r.split()[: rng.randint(2, 14)])
                for r in refs]
        ref = sacrebleu.corpus_bleu(hyps, [refs], tokenize="none", smooth_method="none", force=True).score
        assert bleu_whitespace(hyps, refs) == pytest.approx(ref, abs=1e-9)


def _brute_force_distance(r: tuple[str, ...], h: tuple[str, ...]) -> int:
    """The recursive definition of Levenshtein distance, no memo: exponential but obviously right."""
    if not r or not h:
        return len(r) + len(h)
    return min(_brute_force_distance(r[1:], h) + 1, _brute_force_distance(r, h[1:]) + 1,
               _brute_force_distance(r[1:], h[1:]) + (r[0] != h[0]))


def test_word_error_rate_hand_cases():
    assert word_error_rate(["the cat sat"], ["the cat sat"]) == 0.0
    assert word_error_rate(["the cat sat down"], ["the cat sat"]) == pytest.approx(1 / 3)  # one insertion
    assert word_error_rate(["the sat"], ["the cat sat"]) == pytest.approx(1 / 3)  # one deletion
    assert word_error_rate(["the dog sat"], ["the cat sat"]) == pytest.approx(1 / 3)  # one substitution
    assert word_error_rate([""], ["one two"]) == 1.0
    assert word_error_rate(["a b c d"], ["x"]) == 4.0  # WER can exceed 1
    # corpus level: (1 + 0) errors / (3 + 2) words, not the mean of per-sentence rates
    assert word_error_rate(["the dog sat", "hi there"], ["the cat sat", "Hi, there!"]) == pytest.approx(1 / 5)
    assert word_error_rate(["Hi, there!"], ["hi there"], normalize=False) == 1.0
    with pytest.raises(ValueError, match="no words"):
        word_error_rate(["x"], [""])


def test_edit_distance_matches_brute_force():
    rng = random.Random(1)
    for _ in range(200):
        r = tuple(rng.choices("abc", k=rng.randint(0, 6)))
        h = tuple(rng.choices("abc", k=rng.randint(0, 6)))
        assert edit_distance(r, h) == _brute_force_distance(r, h), (r, h)
