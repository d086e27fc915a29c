"""Small real image sets for fine-tuning: category folders of pictures, split by image, decoded once and cached.

The set shipped here is Debian ``openclipart-png`` (public-domain clip art from openclipart.org 0.18): 22 top-level
category folders under ``/usr/share/openclipart/png``, each with sub-folders. ``CLIPART_CLASSES`` keeps the ten
folders that hold pictures of things (animals, buildings, food, ... , transportation) and leaves out the icon, shape,
symbol and "unsorted" folders and those with fewer than 50 images. An item's class is its top-level folder.

* **Duplicates.** The package stores many files twice (``animals/frog.png`` and ``animals/amphibian/frog.png``, and
  across categories). Items are keyed by the SHA-256 of their bytes: copies inside one class count once, and an
  image found under two classes is dropped (its label is ambiguous), as are 12 files over 50 megapixels. 2,202
  images remain in the ten classes (63 buildings … 491 recreation). Near-duplicates (the same drawing in two
  colours) are distinct files and may fall into different splits.
* **Split.** By image, not by file: an item is test when ``sha256(f"{seed}:{digest}")`` falls in the first
  ``test_fraction`` of the hash range, validation in the next ``val_fraction``, train otherwise. The split of an
  image never depends on which other files exist, and copies cannot straddle splits. With the defaults (seed 0,
  0.2 / 0.1): 1,533 train, 190 validation, 479 test images.
* **Pixels.** ``render`` composites transparency onto a white background, fits the longer side to ``size``
  (aspect kept, Pillow's antialiased bilinear) and centres it on a white square: clip art is mostly drawings on
  transparent canvases of any shape. Files are opened through ``text.processors.load_image`` (bombs, truncated
  and non-image files are refused with an error naming the file).
* **Cache.** The decoded (N, size, size, 3) uint8 array of a whole folder set is stored under
  ``~/.cache/omnigpt/imagesets/`` keyed by the classes, size and the files' digests (decoding the ~2,000
  PNGs takes about a minute on two cores; a cached set loads in a second).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from omnigpt.text.processors import MAX_PIXELS, ImageInput, load_image

CLIPART_DIR = Path("/usr/share/openclipart/png")
CLIPART_CLASSES: tuple[str, ...] = ("animals", "buildings", "food", "geography", "office", "people", "plants",
                                    "recreation", "tools", "transportation")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp")
WHITE = (255, 255, 255)
Split = Literal["train", "val", "test"]


def cache_dir() -> Path:
    return Path(os.environ.get("OMNIGPT_CACHE", Path.home() / ".cache" / "omnigpt")) / "imagesets"


@dataclass(frozen=True)
class FolderItem:
    path: Path
    label: int  # index into the class tuple
    digest: str  # SHA-256 of the file's bytes: the image's identity


def too_large(path: Path) -> bool:
    """Whether a file's header declares more than ``MAX_PIXELS`` pixels (read without decoding the pixels)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size[0] * im.size[1] > MAX_PIXELS
    except Image.DecompressionBombError:
        return True
    except (OSError, SyntaxError, ValueError):
        return False  # not an image at all: ``render`` raises the error naming it


def list_image_folder(root: str | Path, classes: Sequence[str]) -> list[FolderItem]:
    """Every distinct image under ``root/<class>/**`` for the given classes (sorted by class, then path).

    Byte-identical copies inside a class count once (the first path in sorted order stands for them); an image
    present under two classes is dropped, and so are files over ``MAX_PIXELS`` (12 in openclipart-png's ten
    classes, e.g. ``food/beverages/milk_mateya_01.png``, 169 megapixels)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found (Debian openclipart-png installs "
                                f"{CLIPART_DIR}; apt-get install openclipart-png)")
    found: dict[str, tuple[int, Path]] = {}
    ambiguous: set[str] = set()
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            have = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise FileNotFoundError(f"{folder}: no such class folder; folders in {root}: {', '.join(have)}")
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        for path in files:
            if too_large(path):
                continue
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest in found and found[digest][0] != label:
                ambiguous.add(digest)
            found.setdefault(digest, (label, path))
    items = [FolderItem(path, label, d) for d, (label, path) in found.items() if d not in ambiguous]
    return sorted(items, key=lambda it: (it.label, str(it.path)))


def split_of(digest: str, seed: int, val_fraction: float, test_fraction: float) -> Split:
    """test / val / train from the image's own hash (see the module docstring): stable, disjoint by content."""
    u = int(hashlib.sha256(f"{seed}:{digest}".encode()).hexdigest()[:15], 16) / 16**15  # uniform in [0, 1)
    return "test" if u < test_fraction else "val" if u < test_fraction + val_fraction else "train"


def render(image: ImageInput, size: int, background: tuple[int, int, int] = WHITE) -> np.ndarray:
    """A picture (path or PIL image) → (size, size, 3) uint8 RGB: transparency over ``background``, the longer side
    fitted to ``size`` with the aspect ratio kept, centred on a ``background`` square."""
    img = load_image(image, MAX_PIXELS)
    if img.mode in ("P", "PA", "LA", "L", "1", "I;16", "I", "F"):
        img = img.convert("RGBA")  # palette transparency and grey+alpha become real alpha
    canvas = Image.new("RGB", img.size, background)
    canvas.paste(img.convert("RGB"), mask=img.getchannel("A") if img.mode == "RGBA" else None)
    w, h = canvas.size
    scale = size / max(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    canvas = canvas.resize((nw, nh), Image.Resampling.BILINEAR)  # Pillow antialiases when it shrinks
    out = Image.new("RGB", (size, size), background)
    out.paste(canvas, ((size - nw) // 2, (size - nh) // 2))
    return np.asarray(out, dtype=np.uint8)


@dataclass
class ImageFolderSet:
    """A category-folder image set, rendered at one size: pixels (N, S, S, 3) uint8, labels (N,), and per item its
    split ('train' | 'val' | 'test') and file path."""

    classes: tuple[str, ...]
    pixels: np.ndarray
    labels: np.ndarray
    splits: np.ndarray
    paths: tuple[str, ...]
    digests: tuple[str, ...]

    def split(self, name: Split, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(pixels, labels) of one split; ``limit``: that many items spread evenly over it (items are sorted by
        class, so a prefix would hold one class)."""
        idx = np.flatnonzero(self.splits == name)
        if limit is not None and limit < len(idx):
            idx = idx[np.linspace(0, len(idx) - 1, max(limit, 0)).round().astype(int)]
        return self.pixels[idx], self.labels[idx]

    def sizes(self) -> dict[str, int]:
        return {s: int((self.splits == s).sum()) for s in ("train", "val", "test")}


def load_image_folder(root: str | Path = CLIPART_DIR, classes: Sequence[str] = CLIPART_CLASSES, size: int = 160,
                      seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                      background: tuple[int, int, int] = WHITE, cache: bool = True) -> ImageFolderSet:
    """The folder set at ``size`` pixels with its split (decoded once, then read from the cache)."""
    if not 0 < test_fraction < 1 or not 0 < val_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in (0, 1) and "
                         f"leave training images")
    classes = tuple(classes)
    items = list_image_folder(root, classes)
    if not items:
        raise ValueError(f"{root}: no images in classes {', '.join(classes)}")
    # Content-addressed: the same images at the same size share a cache file wherever their folder lies.
    key = hashlib.sha256(repr((classes, size, background, [it.digest for it in items])).encode()).hexdigest()[:16]
    file = cache_dir() / f"{Path(root).name}-{size}px-{key}.npy"
    if cache and file.is_file():
        pixels = np.load(file, allow_pickle=False)
    else:
        pixels = np.stack([render(it.path, size, background) for it in items])  # (N, S, S, 3)
        if cache:
            file.parent.mkdir(parents=True, exist_ok=True)
            tmp = file.with_suffix(f".tmp{os.getpid()}.npy")
            np.save(tmp, pixels)
            os.replace(tmp, file)  # atomic: a killed run leaves no half-written cache
    splits = np.array([split_of(it.digest, seed, val_fraction, test_fraction) for it in items])
    return ImageFolderSet(classes=classes, pixels=pixels, labels=np.array([it.label for it in items], np.int64),
                          splits=splits, paths=tuple(str(it.path) for it in items),
                          digests=tuple(it.digest for it in items))


__all__ = ["CLIPART_CLASSES", "CLIPART_DIR", "FolderItem", "ImageFolderSet", "list_image_folder",
           "load_image_folder", "render", "split_of", "too_large"]
