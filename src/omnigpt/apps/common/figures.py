"""Evaluation artefacts written next to ``eval.json``: a confusion-matrix PNG for classification, a Markdown sample
table (source, reference, output) for summarization and translation, boxes drawn on an image for detection.

matplotlib with the Agg backend (no display needed), imported on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))


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


def draw_boxes(image: np.ndarray | Image.Image, boxes: Sequence[Sequence[float]], labels: Sequence[str] = (),
               scores: Sequence[float] | None = None, truth: Sequence[Sequence[float]] = (), scale: int = 4,
               colors: Sequence[int] = ()) -> Image.Image:
    """The image enlarged ``scale`` times with true boxes in white and predicted ones in colour (label and score
    above). Boxes are y0 x0 y1 x1 in the image's pixels, ends exclusive; ``colors`` index ``PALETTE``."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img = img.convert("RGB")
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    for y0, x0, y1, x1 in truth:
        draw.rectangle([x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1], outline=(255, 255, 255), width=1)
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        color = PALETTE[(colors[i] if i < len(colors) else i) % len(PALETTE)]
        draw.rectangle([x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1], outline=color, width=2)
        text = labels[i] if i < len(labels) else ""
        if scores is not None:
            text = f"{text} {scores[i]:.2f}"
        if text:
            ty = max(0, y0 * scale - 11)
            draw.rectangle([x0 * scale, ty, x0 * scale + 6 * len(text) + 2, ty + 10], fill=color)
            draw.text((x0 * scale + 1, ty - 1), text, fill=(0, 0, 0))
    return img


__all__ = ["PALETTE", "confusion_png", "draw_boxes", "sample_table"]
