"""Task metrics: accuracy, recall@k, exact match, corpus BLEU-4, word error rate (pure Python / NumPy), and for
the language applications thin wrappers over the field's reference packages — scikit-learn (accuracy, macro-F1,
confusion matrix), Google's ``rouge-score`` (ROUGE-1/2/L) and sacreBLEU (BLEU, chrF) — imported on first use.

No model code, so ``omnigpt eval``, the benchmarks and the tests share one definition.

* BLEU follows Papineni et al. (2002) as sacrebleu computes it without smoothing: corpus-level clipped n-gram
  precisions for n = 1…4 (counts summed over all sentences before dividing), their geometric mean, times the
  brevity penalty exp(1 − r / c) when the candidate corpus is shorter (c < r). With several references per
  sentence, counts clip against the maximum count in any reference and r takes the reference length closest to
  the candidate's (ties → shorter), as in the original. Tokenisation is whitespace splitting of the given text;
  normalise before calling (``normalize_text``) when punctuation or case should not count. Returned on sacrebleu's
  0–100 scale.
* WER = (substitutions + deletions + insertions) / reference words, summed over the corpus (Levenshtein on words,
  one dynamic-programming row at a time). An empty reference counts its hypothesis words as insertions.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np


def accuracy(predictions: Sequence[object], targets: Sequence[object]) -> float:
    """Fraction of positions where prediction == target."""
    _same_length(predictions, targets)
    if not predictions:
        raise ValueError("accuracy of an empty set is undefined")
    return sum(p == t for p, t in zip(predictions, targets, strict=True)) / len(predictions)


def recall_at_k(scores: np.ndarray | Sequence[Sequence[float]], targets: Sequence[int] | None = None,
                ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Scores (Q, G) of each query against each gallery item; target of query i is ``targets[i]`` (default i).

    The target's rank is the number of gallery items scoring strictly higher (ties count in the query's favour,
    as ``models.contrastive.recall_at_k`` does)."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be (queries, gallery), got shape {s.shape}")
    t = np.arange(s.shape[0]) if targets is None else np.asarray(targets)
    if len(t) != s.shape[0] or (len(t) and (t.min() < 0 or t.max() >= s.shape[1])):
        raise ValueError("targets must give one gallery index per query")
    rank = (s > s[np.arange(len(t)), t][:, None]).sum(axis=1)
    return {k: float((rank < k).mean()) for k in ks}


def normalize_text(text: str) -> str:
    """Lower case, punctuation removed (apostrophes kept), whitespace collapsed — for exact match, BLEU, WER."""
    text = re.sub(r"[^\w' ]+", " ", text.lower())
    return " ".join(text.split())


def exact_match(predictions: Sequence[str], references: Sequence[str], normalize: bool = True) -> float:
    """Fraction of predictions equal to their reference (after ``normalize_text`` unless disabled)."""
    _same_length(predictions, references)
    if not predictions:
        raise ValueError("exact match of an empty set is undefined")
    f = normalize_text if normalize else str.strip
    return sum(f(p) == f(r) for p, r in zip(predictions, references, strict=True)) / len(predictions)


def _ngrams(words: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def bleu_whitespace(hypotheses: Sequence[str], references: Sequence[str] | Sequence[Sequence[str]],
                    max_n: int = 4) -> float:
    """Corpus BLEU (0–100) of whitespace-tokenised ``hypotheses`` against one reference string per hypothesis or a
    list of references per hypothesis; 0 when any n-gram order has no match (no smoothing). Equals sacreBLEU with
    ``tokenize="none", smooth_method="none"``: the score of the multimodal apps' short, normalised answers, which is
    not the translation score (``translation_scores``: sacreBLEU's 13a tokenizer, smoothing)."""
    _same_length(hypotheses, references)
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, refs in zip(hypotheses, references, strict=True):
        ref_list = [refs] if isinstance(refs, str) else list(refs)
        if not ref_list:
            raise ValueError("every hypothesis needs at least one reference")
        h = hyp.split()
        rs = [r.split() for r in ref_list]
        hyp_len += len(h)
        ref_len += min((abs(len(r) - len(h)), len(r)) for r in rs)[1]  # closest length, ties → shorter
        for n in range(1, max_n + 1):
            counts = _ngrams(h, n)
            max_ref: Counter[tuple[str, ...]] = Counter()
            for r in rs:
                max_ref |= _ngrams(r, n)  # elementwise max over references
            matches[n - 1] += sum(min(c, max_ref[g]) for g, c in counts.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100.0 * bp * math.exp(log_p)


def edit_distance(ref: Sequence[str], hyp: Sequence[str]) -> int:
    """Levenshtein distance between two token sequences (unit cost substitution, deletion, insertion)."""
    prev = list(range(len(hyp) + 1))  # distance from ref[:0] to hyp[:j]
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))  # delete, insert, substitute/match
        prev = cur
    return prev[-1]


def word_error_rate(hypotheses: Sequence[str], references: Sequence[str], normalize: bool = True) -> float:
    """Corpus WER: total word edits / total reference words (``normalize_text`` first unless disabled)."""
    _same_length(hypotheses, references)
    f = normalize_text if normalize else (lambda s: s)
    errors = words = 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        r, h = f(ref).split(), f(hyp).split()
        errors += edit_distance(r, h)
        words += len(r)
    if words == 0:
        raise ValueError("WER is undefined when the references hold no words")
    return errors / words


def classification_scores(predictions: Sequence[str], targets: Sequence[str], labels: Sequence[str]) -> dict:
    """``{"accuracy", "macro_f1"}`` (fractions in [0, 1]) by scikit-learn; macro-F1 averages the F1 of every label in
    ``labels`` (a label never predicted nor present scores 0). A prediction outside ``labels`` counts as wrong."""
    from sklearn.metrics import accuracy_score, f1_score

    _check_labels(predictions, targets, labels)
    return {"accuracy": float(accuracy_score(targets, predictions)),
            "macro_f1": float(f1_score(targets, predictions, labels=list(labels), average="macro", zero_division=0))}


def confusion(predictions: Sequence[str], targets: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """Confusion matrix (scikit-learn): row i = true label ``labels[i]``, column j = predicted ``labels[j]``."""
    from sklearn.metrics import confusion_matrix

    _check_labels(predictions, targets, labels)
    return confusion_matrix(targets, predictions, labels=list(labels)).astype(int).tolist()


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """``{"rouge1", "rouge2", "rougeL"}``: mean F1 × 100 over the pairs, by ``rouge_score.RougeScorer`` with the
    Porter stemmer (its tokenizer lower-cases and keeps only ``[a-z0-9]`` runs: English text)."""
    from rouge_score.rouge_scorer import RougeScorer

    _same_length(predictions, references)
    if not predictions:
        raise ValueError("ROUGE of an empty set is undefined")
    keys = ("rouge1", "rouge2", "rougeL")
    scorer = RougeScorer(list(keys), use_stemmer=True)
    totals = dict.fromkeys(keys, 0.0)
    for pred, ref in zip(predictions, references, strict=True):
        score = scorer.score(ref, pred)  # (target, prediction) order
        for k in keys:
            totals[k] += score[k].fmeasure
    return {k: 100.0 * v / len(predictions) for k, v in totals.items()}


def translation_scores(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """``{"bleu_sacrebleu", "chrf"}``: sacreBLEU's ``corpus_bleu`` (tokenizer 13a, exponential smoothing) and
    ``corpus_chrf`` (character 6-grams, beta 2), one reference per prediction, on sacreBLEU's 0–100 scale."""
    import sacrebleu

    _same_length(predictions, references)
    if not predictions:
        raise ValueError("BLEU of an empty set is undefined")
    hyps, refs = list(predictions), [list(references)]
    return {"bleu_sacrebleu": float(sacrebleu.corpus_bleu(hyps, refs).score),
            "chrf": float(sacrebleu.corpus_chrf(hyps, refs).score)}


def _check_labels(predictions: Sequence[str], targets: Sequence[str], labels: Sequence[str]) -> None:
    _same_length(predictions, targets)
    if not predictions:
        raise ValueError("scores of an empty set are undefined")
    if unknown := sorted(set(targets) - set(labels)):
        raise ValueError(f"targets hold labels not in labels: {unknown[:5]}; labels: {list(labels)}")


def _same_length(a: Sequence[object], b: Sequence[object]) -> None:
    if len(a) != len(b):
        raise ValueError(f"got {len(a)} predictions for {len(b)} references")


__all__ = ["accuracy", "classification_scores", "bleu_whitespace", "confusion", "edit_distance", "exact_match",
           "normalize_text", "recall_at_k", "rouge_scores", "translation_scores", "word_error_rate"]
