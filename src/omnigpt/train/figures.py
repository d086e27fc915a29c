"""Evaluation artefacts written next to ``eval.json``: a confusion-matrix PNG for classification, a Markdown sample
table (source, reference, output) for summarization and translation.

matplotlib with the Agg backend (no display needed), imported on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def confusion_png(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: str | Path,
                  title: str = "") -> Path:
    """Draw ``matrix`` (rows = true label, columns = predicted, as ``metrics.confusion`` returns it) with the count
    in every cell; write a PNG to ``path`` and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(matrix, dtype=np.int64)
    n = len(labels)
    if m.shape != (n, n):
        raise ValueError(f"matrix of shape {m.shape} for {n} labels")
    size = 2.5 + 0.6 * n
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    try:
        ax.imshow(m, cmap="Blues", vmin=0, vmax=max(int(m.max()), 1))
        ax.set_xticks(range(n), labels=list(labels), rotation=45, ha="right")
        ax.set_yticks(range(n), labels=list(labels))
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if title:
            ax.set_title(title)
        half = m.max() / 2
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > half else "black")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path


def _cell(value: object) -> str:
    # A Markdown table cell is one line; "|" would end the cell early.
    text = str(value).replace("|", "\\|")
    return " ".join(text.replace("\r\n", "\n").replace("\r", "\n").split("\n")).strip() or " "


def sample_table(rows: list[dict[str, str]], path: str | Path) -> Path:
    """Write ``rows`` as one Markdown table (columns = the keys of the first row, in order; a key missing from a
    later row is an empty cell); ``|`` is escaped and line breaks become spaces. Returns the path."""
    if not rows:
        raise ValueError("sample_table needs at least one row")
    columns = list(rows[0])
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


__all__ = ["confusion_png", "sample_table"]
