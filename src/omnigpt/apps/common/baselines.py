"""Same-run baselines for the language applications: what a model has to beat, computed on the same split.

* Classification: the majority class of the train split; TF-IDF n-grams + logistic regression (scikit-learn) — the
  linear text classifier of the literature (e.g. Joachims 1998; fastText's baselines). Character 1–3-grams for
  both sets: the Chinese reviews need no word segmentation that way, and on BBC topics word 1–2-grams scored lower
  on the validation split (accuracy 0.973 vs 0.982 for characters, any C in the grid).
  ``sublinear_tf`` (1 + log tf) and ``min_df=2`` as usual; the inverse regularisation strength C is chosen on the
  validation split from a small grid (the vectoriser is fitted once; each C is one more logistic regression),
  and the model fitted on train with the best C predicts the evaluated split. liblinear for two classes (about 1 s
  per fit on the reviews against 2–12 s for lbfgs, same accuracy), lbfgs (multinomial) for more.
* Summarization: lead-1, the article's first sentence cut to the median reference length in words of the train
  split (the classic news baseline, See et al. 2017 use lead-3 for multi-sentence summaries; a headline is one
  short sentence).
* Translation: copying the source, the floor any system must clear (names and numbers carry over).

Deviation: the first sentence is found by a regular expression (end punctuation followed by white space), not by
a trained sentence splitter — Punkt's model is not in the registries offline; with the cut to a few words the
difference rarely matters.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence

from omnigpt.apps.common.metrics import classification_scores, rouge_scores, translation_scores
from omnigpt.data.textsets import CLASSIFICATION_SETS, PAIR_SETS, TextPair, load_classification, load_pairs, split_items

C_GRID = (1.0, 4.0, 16.0)  # inverse L2 strength tried on the validation split
DEFAULT_C = 4.0  # when no validation split is given
# name -> (analyzer, ngram_range) of the TF-IDF baseline; chosen on the validation split (see the module docstring)
TFIDF_CONFIG: dict[str, tuple[str, tuple[int, int]]] = {"sentiment-zh": ("char", (1, 3)),
                                                        "topic-bbc": ("char", (1, 3))}


def majority_class(train_labels: Sequence[str], n: int) -> list[str]:
    """``n`` copies of the most frequent train label (ties → the first in sorted order)."""
    if not train_labels:
        raise ValueError("majority class of an empty train set is undefined")
    counts = Counter(train_labels)
    best = max(sorted(counts), key=lambda label: counts[label])
    return [best] * n


def tfidf_logreg(train_texts: Sequence[str], train_labels: Sequence[str], test_texts: Sequence[str],
                 analyzer: str = "char", ngram_range: tuple[int, int] = (1, 3), seed: int = 0, *,
                 C: float | None = None, val_texts: Sequence[str] | None = None,
                 val_labels: Sequence[str] | None = None) -> list[str]:
    """Predicted labels of ``test_texts`` by TF-IDF(``analyzer``, ``ngram_range``, sublinear tf, min_df 2) + logistic
    regression fitted on the train texts. C: given, else the best of ``C_GRID`` by validation accuracy when
    ``val_texts``/``val_labels`` are given (ties → smaller C), else ``DEFAULT_C``."""
    from threadpoolctl import threadpool_limits

    if len(train_texts) != len(train_labels) or not train_texts:
        raise ValueError(f"need one label per train text and at least one text, got {len(train_texts)} texts "
                         f"and {len(train_labels)} labels")
    # One BLAS thread: lbfgs makes many small BLAS calls, and OpenBLAS's spinning threads made a 400-article fit
    # 40x slower (7 s instead of 0.2 s) on a busy 2-core machine.
    with threadpool_limits(1):
        return _tfidf_logreg(train_texts, train_labels, test_texts, analyzer, ngram_range, seed, C, val_texts,
                             val_labels)


def _tfidf_logreg(train_texts: Sequence[str], train_labels: Sequence[str], test_texts: Sequence[str], analyzer: str,
                  ngram_range: tuple[int, int], seed: int, C: float | None, val_texts: Sequence[str] | None,
                  val_labels: Sequence[str] | None) -> list[str]:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    if len(set(train_labels)) < 2:
        raise ValueError("logistic regression needs at least two classes in the train labels")
    vectorizer = TfidfVectorizer(analyzer=analyzer, ngram_range=tuple(ngram_range), sublinear_tf=True, min_df=2)
    x_train = vectorizer.fit_transform(train_texts)  # (N, V) sparse

    solver = "liblinear" if len(set(train_labels)) == 2 else "lbfgs"  # liblinear has no multinomial loss

    def fit(c: float) -> LogisticRegression:
        return LogisticRegression(C=c, solver=solver, max_iter=2000, random_state=seed).fit(x_train, list(train_labels))

    if C is None and val_texts is not None and val_labels is not None and len(val_texts):
        x_val = vectorizer.transform(val_texts)
        best = None  # (validation accuracy, -C, model): ties go to the smaller C
        for c in C_GRID:
            m = fit(c)
            hits = sum(p == t for p, t in zip(m.predict(x_val), val_labels, strict=True))
            if best is None or (hits, -c) > best[:2]:
                best = (hits, -c, m)
        model = best[2]
    else:
        model = fit(DEFAULT_C if C is None else C)
    if not len(test_texts):
        return []
    return [str(p) for p in model.predict(vectorizer.transform(test_texts))]


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+")


def lead_1(sources: Sequence[str], max_words: int) -> list[str]:
    """The first sentence of each source (up to end punctuation followed by white space), cut to ``max_words``."""
    if max_words < 1:
        raise ValueError(f"max_words must be at least 1, got {max_words}")
    out = []
    for s in sources:
        m = _SENTENCE_END.search(s.strip())
        first = s.strip()[: m.start()] if m else s.strip()
        out.append(" ".join(first.split()[:max_words]))
    return out


def copy_source(sources: Sequence[str]) -> list[str]:
    """The sources themselves as the translations."""
    return list(sources)


def classification_baselines(name: str, split: str = "test", limit: int | None = None) -> dict[str, dict[str, float]]:
    """``{"majority": {...}, "tfidf_<analyzer>_<lo>_<hi>_logreg": {...}}`` with ``{"accuracy", "macro_f1"}`` each:
    fitted on the train split of set ``name``, scored on ``split`` (C tuned on val, unless ``split`` is val)."""
    if name not in TFIDF_CONFIG:
        raise ValueError(f"unknown classification set {name!r}; valid: {', '.join(CLASSIFICATION_SETS)}")
    labels, items = load_classification(name)
    train, test = split_items(items, "train"), split_items(items, split)[:limit]  # the items a model was scored on
    if not test:
        raise ValueError(f"split {split!r} of {name} is empty")
    val = split_items(items, "val") if split != "val" else []
    targets = [x.label for x in test]
    train_labels = [x.label for x in train]
    analyzer, ngrams = TFIDF_CONFIG[name]
    predicted = tfidf_logreg([x.text for x in train], train_labels, [x.text for x in test], analyzer, ngrams,
                             val_texts=[x.text for x in val], val_labels=[x.label for x in val])
    return {"majority": classification_scores(majority_class(train_labels, len(test)), targets, labels),
            f"tfidf_{analyzer}_{ngrams[0]}_{ngrams[1]}_logreg": classification_scores(predicted, targets, labels)}


def pair_baselines(name: str, split: str = "test", limit: int | None = None,
                   pairs: Sequence[TextPair] | None = None) -> dict[str, dict[str, float]]:
    """Baselines of text-pair set ``name`` on ``split`` (its first ``limit`` pairs when given, or exactly ``pairs``:
    the items a model was scored on): summarize-* → ``{"lead_1": rouge_scores}`` cut to the train split's median
    reference length in words; translate-* → ``{"copy_source": translation_scores}``."""
    if name not in PAIR_SETS:
        raise ValueError(f"unknown text-pair set {name!r}; valid: {', '.join(PAIR_SETS)}")
    all_pairs = load_pairs(name)
    test = list(pairs) if pairs is not None else split_items(all_pairs, split)[:limit]
    if not test:
        raise ValueError(f"split {split!r} of {name} is empty")
    sources, references = [p.source for p in test], [p.target for p in test]
    if name.startswith("summarize-"):
        max_words = max(1, round(statistics.median(len(p.target.split()) for p in split_items(all_pairs, "train"))))
        return {"lead_1": rouge_scores(lead_1(sources, max_words), references)}
    return {"copy_source": translation_scores(copy_source(sources), references)}


__all__ = ["C_GRID", "DEFAULT_C", "TFIDF_CONFIG", "classification_baselines", "copy_source", "lead_1",
           "majority_class", "pair_baselines", "tfidf_logreg"]
