"""Detection scenes composed from real images: Fashion-MNIST items pasted onto real photographs, with exact boxes.

No detection data set ships offline, so ``SceneGenerator`` composes one, seeded: a scene is a random crop of a
photograph (scikit-image's ``skimage.data`` and scikit-learn's sample images), resized to ``image_size``² and
maybe mirrored, with 1–``max_objects`` Fashion-MNIST items pasted on it at random scales and positions, each
tinted with a random bright colour. Scene ``i`` of a split is a pure function of (seed, split, i).

Exact boxes: an item's *object pixels* are those of its resized 28×28 image at or above ``threshold`` grey; only
they are pasted (a hard mask, no blending), and ``owner`` records which object each scene pixel shows (-1: the
photograph). An object's box is the tight box of the pixels it still owns after later objects were pasted over
it — the visible extent, as COCO boxes are. Occlusion is allowed up to ``max_occlusion``: a placement that would
hide more than that fraction of an earlier object's pixels is redrawn (up to 30 tries, then that object is left
out), so every object in a scene keeps at least half its pixels and no object is entirely hidden.

Splits share nothing: the test split takes its items from Fashion-MNIST's official test images and its
backgrounds from photographs used nowhere else (``TEST_BACKGROUNDS``); train and val take items from the training
images (val: the first ``VAL_ITEMS`` of a permutation fixed by seed 0, train: the rest) and backgrounds from
``TRAIN_BACKGROUNDS``. A crop of a photograph counts as the same background, so the split is by photograph.

Boxes are ``(y0, x0, y1, x1)`` in pixels, y1/x1 exclusive (the box covers rows y0 … y1-1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from omnigpt.data.multimodal import FASHION_MNIST_CLASSES, load_fashion_mnist

# Photographs, by the function that returns them (``skimage.data.<name>`` or ``sklearn:<file>``). ``cat`` is the
# same photograph as ``chelsea`` and is left out; drawings (logo, colorwheel) and masks (horse) are not photographs.
TRAIN_BACKGROUNDS = ("astronaut", "brick", "camera", "chelsea", "clock", "coins", "gravel", "hubble_deep_field",
                     "immunohistochemistry", "page", "retina", "text", "cell", "sklearn:flower.jpg")
TEST_BACKGROUNDS = ("coffee", "rocket", "grass", "moon", "sklearn:china.jpg")
VAL_ITEMS = 5000  # Fashion-MNIST training images kept out of training scenes for the validation scenes

# Class sets: name → (class names, Fashion-MNIST label → class index). "fmnist5" merges the garments that even
# full-size classifiers confuse (tops; footwear), "fmnist10" keeps Fashion-MNIST's own ten classes.
CLASS_SETS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "fmnist10": (FASHION_MNIST_CLASSES, tuple(range(10))),
    "fmnist5": (("top", "trouser", "dress", "footwear", "bag"), (0, 1, 0, 2, 0, 3, 0, 3, 4, 3)),
}


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn."""

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    min_scale: int = 16  # an item's 28×28 image is resized to s×s, s uniform in [min_scale, max_scale]
    max_scale: int = 36
    threshold: int = 40  # grey level (0–255) from which an item's pixel is an object pixel
    max_occlusion: float = 0.5  # the largest fraction of an object's pixels that later objects may cover
    class_set: str = "fmnist5"

    def __post_init__(self) -> None:
        if self.class_set not in CLASS_SETS:
            raise ValueError(f"class_set must be one of {sorted(CLASS_SETS)}, got {self.class_set!r}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if not 4 <= self.min_scale <= self.max_scale <= self.image_size:
            raise ValueError(f"need 4 <= min_scale <= max_scale <= image_size, got {self.min_scale}, "
                             f"{self.max_scale}, {self.image_size}")
        if not 0 < self.threshold < 256 or not 0 <= self.max_occlusion < 1:
            raise ValueError("threshold must be in (0, 256) and max_occlusion in [0, 1)")

    @property
    def classes(self) -> tuple[str, ...]:
        return CLASS_SETS[self.class_set][0]


@dataclass
class Scene:
    image: np.ndarray  # (S, S, 3) uint8
    boxes: np.ndarray  # (n, 4) int64: y0, x0, y1, x1 (exclusive ends), tight around the visible object pixels
    labels: np.ndarray  # (n,) int64 class indices
    owner: np.ndarray  # (S, S) int64: the object each pixel shows, -1 for the photograph
    background: np.ndarray  # (S, S, 3) uint8: the scene before anything was pasted
    background_name: str
    items: np.ndarray  # (n,) int64: each object's index in its Fashion-MNIST file (train or t10k)
    visible: np.ndarray  # (n,) float64: the fraction of each object's pixels still visible (>= 1 - max_occlusion)


def load_background(name: str) -> np.ndarray:
    """A photograph as uint8 (H, W, 3) (grey ones repeated over three channels)."""
    try:
        if name.startswith("sklearn:"):
            from sklearn.datasets import load_sample_image

            img = load_sample_image(name.split(":", 1)[1])
        else:
            import skimage.data

            img = getattr(skimage.data, name)()
    except ImportError as e:
        raise ImportError(f"detection scenes need scikit-image and scikit-learn for their photographs "
                          f"(pip install scikit-image scikit-learn): {e}") from None
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"background {name!r}: expected a uint8 photograph, got {img.dtype} {img.shape}")
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else np.ascontiguousarray(img[..., :3])


class SceneGenerator:
    """Scenes of one split (``train``, ``val`` or ``test``); ``scene(i)`` is a pure function of (seed, split, i).

    ``item_limit`` reads only the first N Fashion-MNIST images of the split's file (quick tests)."""

    SPLIT_CODES = {"train": 0, "val": 1, "test": 2}

    def __init__(self, config: SceneConfig, split: Literal["train", "val", "test"], seed: int = 0,
                 item_limit: int | None = None) -> None:
        if split not in self.SPLIT_CODES:
            raise ValueError(f"split must be train, val or test, got {split!r}")
        self.config, self.split, self.seed = config, split, seed
        images, labels = load_fashion_mnist("test" if split == "test" else "train", limit=item_limit)
        if split != "test":
            perm = np.random.default_rng(0).permutation(len(images))
            n_val = min(VAL_ITEMS, len(images) // 2)
            keep = np.sort(perm[:n_val] if split == "val" else perm[n_val:])
            images, labels = images[keep], labels[keep]
            self.item_ids = keep  # index into Fashion-MNIST's training file
        else:
            self.item_ids = np.arange(len(images))
        self.items = images
        to_class = np.array(CLASS_SETS[config.class_set][1])
        self.item_classes = to_class[labels]  # (n_items,)
        # Sampling draws a class uniformly, then an item of it (the merged classes would otherwise dominate).
        self.by_class = [np.flatnonzero(self.item_classes == c) for c in range(len(config.classes))]
        self.background_names = TEST_BACKGROUNDS if split == "test" else TRAIN_BACKGROUNDS
        self.backgrounds = [load_background(n) for n in self.background_names]

    def _background(self, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """A random square crop (a quarter of the short side up to all of it) of a random photograph, resized."""
        S = self.config.image_size
        k = int(rng.integers(len(self.backgrounds)))
        photo = self.backgrounds[k]
        H, W = photo.shape[:2]
        side = int(rng.integers(min(H, W) // 4, min(H, W) + 1))
        y, x = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
        crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((S, S), Image.Resampling.BILINEAR)
        out = np.asarray(crop)
        return (out[:, ::-1].copy() if rng.random() < 0.5 else out.copy()), self.background_names[k]

    def scene(self, index: int) -> Scene:
        cfg = self.config
        S = cfg.image_size
        rng = np.random.default_rng([self.seed, self.SPLIT_CODES[self.split], index])
        canvas, bg_name = self._background(rng)
        background = canvas.copy()
        owner = np.full((S, S), -1, dtype=np.int64)
        sizes: list[int] = []  # object pixels of each pasted object
        labels: list[int] = []
        items: list[int] = []
        n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        for _ in range(n):
            c = int(rng.integers(len(cfg.classes)))
            item = int(rng.choice(self.by_class[c]))
            s = int(rng.integers(cfg.min_scale, cfg.max_scale + 1))
            grey = np.asarray(Image.fromarray(self.items[item]).resize((s, s), Image.Resampling.BILINEAR))
            if rng.random() < 0.5:
                grey = grey[:, ::-1]
            mask = grey >= cfg.threshold  # (s, s) the object pixels
            if not mask.any():
                continue
            tint = rng.uniform(0.35, 1.0, size=3)
            tint[rng.integers(3)] = 1.0  # one channel full: a bright colour, never near-black
            color = np.clip(grey[..., None] / 255.0 * tint * 255.0 + 0.5, 0, 255).astype(np.uint8)  # (s, s, 3)
            j = len(labels)
            for _try in range(30):
                y, x = int(rng.integers(0, S - s + 1)), int(rng.integers(0, S - s + 1))
                covered = owner[y : y + s, x : x + s][mask]  # who owns the pixels this placement would take
                hidden = np.bincount(covered[covered >= 0], minlength=j)
                visible = np.bincount(owner[owner >= 0], minlength=j) - hidden  # each earlier object, after
                if (visible >= (1 - cfg.max_occlusion) * np.array(sizes)).all():
                    break
            else:
                continue  # no placement keeps the earlier objects visible enough: leave this one out
            region = canvas[y : y + s, x : x + s]
            region[mask] = color[mask]
            owner[y : y + s, x : x + s][mask] = j
            sizes.append(int(mask.sum()))
            labels.append(c)
            items.append(int(self.item_ids[item]))
        boxes = np.zeros((len(labels), 4), dtype=np.int64)
        visible = np.bincount(owner[owner >= 0], minlength=len(labels)) / np.maximum(sizes, 1)
        for i in range(len(labels)):
            rows, cols = np.nonzero(owner == i)
            boxes[i] = (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
        return Scene(image=canvas, boxes=boxes, labels=np.array(labels, dtype=np.int64), owner=owner,
                     background=background, background_name=bg_name, items=np.array(items, dtype=np.int64),
                     visible=visible)

    def scenes(self, indices: range | list[int]) -> list[Scene]:
        return [self.scene(i) for i in indices]


__all__ = ["CLASS_SETS", "TEST_BACKGROUNDS", "TRAIN_BACKGROUNDS", "Scene", "SceneConfig", "SceneGenerator",
           "load_background"]
