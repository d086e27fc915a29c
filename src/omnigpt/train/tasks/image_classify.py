"""The ``image-classify`` task: a Vision Transformer trained from scratch to classify Fashion-MNIST.

Model: ``models.vision.ViTForImageClassification`` — the ViT encoder (patch embedding + the decoder's own ``Block``
with ``causal=False``) and a linear head on the CLS token (or the mean of the patch tokens). Data: Debian's
``dataset-fashion-mnist`` (Zalando's IDX files, read by ``data.multimodal.load_fashion_mnist``): the 60,000
training images minus ``val_size`` held out by a permutation fixed by seed 0 (so every run validates on the same
images), and the official 10,000-image test set, read only by ``evaluate_run`` (``omnigpt eval``) and the final
evaluation. Training rows are a pure function of (seed, global sample index): an epoch-wise seeded permutation,
then per image a random shift of up to ``max_shift`` pixels (zero padding) and a horizontal flip — DeiT-style
augmentation cut down to what 28×28 grey clothes allow.

Evaluation: accuracy and loss on the validation images every ``eval_interval`` steps (the curve in
``metrics.jsonl``); ``omnigpt eval RUN`` → ``accuracy`` and ``macro_f1`` on the test set (scikit-learn's), a
confusion-matrix PNG, the validation-accuracy curve, and two baselines fitted in the same call on the same
training pixels: nearest centroid and multinomial logistic regression (scikit-learn).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from omnigpt.checkpoints.state import load_model
from omnigpt.data.multimodal import FASHION_MNIST_CLASSES, load_fashion_mnist
from omnigpt.models.vision import ImageClassifierConfig, VisionConfig, ViTForImageClassification
from omnigpt.train.recipe import RecipeError
from omnigpt.train.tasks.base import LossOf, Task

FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530  # the training images' pixel mean and std (in [0, 1])


@dataclass
class ImageDataSpec:
    """Fashion-MNIST from Debian ``dataset-fashion-mnist``; validation images come out of the training split."""

    dataset: Literal["fashion-mnist"] = "fashion-mnist"
    val_size: int = 5000  # training images held out for the periodic evaluation (a fixed permutation, seed 0)
    limit: int | None = None  # the first N training (and test) images only: quick trials and tests
    max_shift: int = 2  # augmentation: random translation by up to this many pixels (0: none)
    flip: bool = True  # augmentation: horizontal flip with probability 1/2


@dataclass
class ImageModelSpec:
    """A ViT preset (``models.vision.VISION_PRESETS``) with ``VisionConfig`` overrides, and the head."""

    preset: str = "vit-fmnist"
    vision: dict[str, Any] = field(default_factory=dict)  # e.g. {patch_size: 4, n_layer: 6}
    pool: Literal["cls", "mean"] = "cls"
    head_dropout: float = 0.0


def classifier_config(spec: ImageModelSpec, labels: tuple[str, ...]) -> ImageClassifierConfig:
    valid = [f.name for f in dataclasses.fields(VisionConfig) if f.name != "name"]
    if unknown := [k for k in spec.vision if k not in valid]:
        raise RecipeError(f"model.vision: unknown key {unknown[0]!r}; valid keys: {', '.join(valid)}")
    try:
        vision = VisionConfig.from_name(spec.preset, **spec.vision)
        return ImageClassifierConfig(name="recipe", vision=vision, labels=labels, pool=spec.pool,
                                     head_dropout=spec.head_dropout, pixel_mean=FMNIST_MEAN, pixel_std=FMNIST_STD)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"model: {e}") from None


def to_pixels(images: Tensor | np.ndarray, config: ImageClassifierConfig) -> Tensor:
    """uint8 (N, H, W) grey images → normalised (N, 1, H, W) float32, resized to the model's input size."""
    x = torch.tensor(np.asarray(images), dtype=torch.float32).div(255.0)[:, None]  # (N, 1, H, W) in [0, 1]
    size = config.vision.image_size
    if x.shape[-2:] != (size, size):
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x - config.pixel_mean) / config.pixel_std


def split_train_val(n: int, val_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of ``n`` training images: a permutation fixed by seed 0, val = its first ``val_size``."""
    perm = np.random.default_rng(0).permutation(n)
    return np.sort(perm[val_size:]), np.sort(perm[:val_size])


def augment(images: np.ndarray, keys: list[int], seed: int, max_shift: int, flip: bool) -> np.ndarray:
    """Shift each image by (dy, dx) ∈ [-max_shift, max_shift]² (zero fill) and flip it left–right with p = 1/2;
    image i's draw depends only on (seed, keys[i]), whatever batch or process it lands in."""
    out = np.zeros_like(images)
    H, W = images.shape[1:]
    s = max_shift
    padded = np.pad(images, ((0, 0), (s, s), (s, s)))
    for i, key in enumerate(keys):
        rng = np.random.default_rng([seed, key])
        dy, dx = rng.integers(0, 2 * s + 1, size=2) if s else (0, 0)
        img = padded[i, dy : dy + H, dx : dx + W]
        out[i] = img[:, ::-1] if flip and rng.random() < 0.5 else img
    return out


@torch.no_grad()
def predict(model: ViTForImageClassification, pixels: Tensor, batch_size: int = 500) -> tuple[Tensor, Tensor]:
    """(logits (N, K) float32, pooled features (N, C)) in batches, in eval mode."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    logits, feats = [], []
    for i in range(0, len(pixels), batch_size):
        out = model(pixels[i : i + batch_size].to(dev))
        logits.append(out.logits.float().cpu())
        feats.append(out.features.float().cpu())
    model.train(was)
    return torch.cat(logits), torch.cat(feats)


def scores(pred: np.ndarray, target: np.ndarray, k: int) -> dict[str, float]:
    """Accuracy and macro-F1 (scikit-learn's, over all ``k`` classes)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": round(float(accuracy_score(target, pred)), 4),
            "macro_f1": round(float(f1_score(target, pred, labels=list(range(k)), average="macro",
                                             zero_division=0)), 4)}


def pixel_baselines(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                    k: int) -> dict[str, Any]:
    """Nearest centroid and multinomial logistic regression on raw pixels in [0, 1], fitted here on the same
    training images (scikit-learn): the floor a learned model has to clear."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import NearestCentroid
    from threadpoolctl import threadpool_limits

    Xtr = train_x.reshape(len(train_x), -1).astype(np.float32) / 255.0
    Xte = test_x.reshape(len(test_x), -1).astype(np.float32) / 255.0
    out: dict[str, Any] = {}
    for name, clf in (("nearest_centroid", NearestCentroid()),
                      ("logistic_regression", LogisticRegression(max_iter=200, C=1.0))):
        t0 = time.perf_counter()
        with threadpool_limits(1):  # lbfgs's many small BLAS calls: spinning BLAS threads only cost on 2 cores
            clf.fit(Xtr, train_y)
        out[name] = {**scores(clf.predict(Xte), test_y, k), "seconds": round(time.perf_counter() - t0, 1)}
    return out


def plot_curve(metrics_file: Path, png: Path) -> bool:
    """Validation accuracy against step and minutes, from a run's ``metrics.jsonl``; False when it holds none."""
    if not metrics_file.is_file():
        return False
    rows = [json.loads(ln) for ln in metrics_file.read_text().splitlines() if ln.strip()]
    times = {r["step"]: r["time"] for r in rows if "time" in r}
    acc = [(r["step"], r["val_accuracy"]) for r in rows if "val_accuracy" in r]
    if not acc:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot([s for s, _ in acc], [100 * a for _, a in acc], "o-", ms=3, label="validation accuracy")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    if acc[-1][0] in times:
        ax.set_title(f"{100 * acc[-1][1]:.1f}% after {times[acc[-1][0]] / 60:.1f} min of training")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return True


def confusion_png(matrix: np.ndarray, labels: tuple[str, ...], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=(2.5 + 0.6 * n, 2.5 + 0.6 * n), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


class ImageClassifyTask(Task):
    name = "image-classify"
    data_spec, model_spec = ImageDataSpec, ImageModelSpec

    @classmethod
    def check_recipe(cls, r: Any) -> None:
        d = r.data
        if d.val_size <= 0 or d.max_shift < 0 or (d.limit is not None and d.limit <= d.val_size):
            raise RecipeError("data: val_size must be > 0, max_shift >= 0, and limit (when set) > val_size")
        classifier_config(r.model, FASHION_MNIST_CLASSES)

    def __init__(self, r: Any) -> None:
        super().__init__(r)
        images, labels = load_fashion_mnist("train", limit=r.data.limit)
        tr, va = split_train_val(len(images), r.data.val_size)
        self.train_x, self.train_y = images[tr], labels[tr]
        self.config = classifier_config(r.model, FASHION_MNIST_CLASSES)
        self.val_pixels, self.val_y = to_pixels(images[va], self.config), torch.from_numpy(labels[va])
        self.model = ViTForImageClassification(self.config)
        self.preprocessor = None  # the config carries labels and normalisation
        self.tokens_per_step = r.batch_size  # images
        self._perms: dict[int, np.ndarray] = {}

    def new_model(self) -> ViTForImageClassification:
        return ViTForImageClassification(self.config)

    def train_module(self) -> nn.Module:
        return LossOf(self.model)

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng([self.r.seed, epoch]).permutation(len(self.train_x))}
        return self._perms[epoch]

    def batch(self, step: int, start: int, count: int) -> dict[str, Tensor]:
        n = len(self.train_x)
        keys = [step * self.r.batch_size + start + j for j in range(count)]  # global sample indices
        idx = np.array([self._perm(g // n)[g % n] for g in keys])
        x = self.train_x[idx]
        if self.r.data.max_shift or self.r.data.flip:
            x = augment(x, keys, self.r.seed, self.r.data.max_shift, self.r.data.flip)
        return {"pixel_values": to_pixels(x, self.config), "labels": torch.from_numpy(self.train_y[idx])}

    @torch.no_grad()
    def evaluate(self, limit: int | None, dtype: torch.dtype | None, loss_module: nn.Module | None,
                 ) -> dict[str, Any]:
        """Loss and accuracy on the first ``limit`` validation images (all of them when None)."""
        x, y = self.val_pixels[:limit], self.val_y[:limit]
        logits, _ = predict(self.model, x)
        return {"val_loss": float(nn.functional.cross_entropy(logits, y)),
                "val_accuracy": float((logits.argmax(-1) == y).float().mean())}

    @classmethod
    def evaluate_run(cls, checkpoint: Path, out: Path, limit: int | None = None) -> dict[str, Any]:
        model = load_model(checkpoint)
        if not isinstance(model, ViTForImageClassification):
            raise ValueError(f"{checkpoint}: not an image classifier ({type(model).__name__})")
        cfg = model.config
        test_x, test_y = load_fashion_mnist("test", limit=limit)
        t0 = time.perf_counter()
        logits, _ = predict(model, to_pixels(test_x, cfg))
        seconds = time.perf_counter() - t0
        pred = logits.argmax(-1).numpy()
        k = cfg.num_labels
        res: dict[str, Any] = {"task": cls.name, "data": f"Fashion-MNIST official test set ({len(test_y)} images)",
                               **scores(pred, test_y, k), "n": len(test_y),
                               "images_per_second": round(len(test_y) / seconds, 1)}
        # The baselines see the same training images the run trained on (minus its validation images).
        state = checkpoint / "trainer_state" / "state.json"
        data = json.loads(state.read_text())["recipe"]["data"] if state.is_file() else {}
        train_x, train_y = load_fashion_mnist("train", limit=data.get("limit"))
        tr, _ = split_train_val(len(train_x), data.get("val_size", 5000))
        res["baselines"] = pixel_baselines(train_x[tr], train_y[tr], test_x, test_y, k)
        from sklearn.metrics import confusion_matrix

        out.mkdir(parents=True, exist_ok=True)
        cm = confusion_matrix(test_y, pred, labels=list(range(k)))
        confusion_png(cm, cfg.labels, out / "confusion.png",
                      f"ViT on Fashion-MNIST test: {100 * res['accuracy']:.1f}%")
        res["confusion_matrix"] = cm.tolist()
        res["pictures"] = ["confusion.png"]
        run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint
        if plot_curve(run_dir / "metrics.jsonl", out / "accuracy_curve.png"):
            res["pictures"].append("accuracy_curve.png")
        return res


__all__ = ["ImageClassifyTask", "ImageDataSpec", "ImageModelSpec", "pixel_baselines", "predict", "to_pixels"]
