"""The ``image-classify`` task: a Vision Transformer from scratch on Fashion-MNIST, or MobileNetV2 fine-tuned on a
small real set (clip art).

Models (``model.backbone``): ``vit`` — ``models.vision.ViTForImageClassification``, the ViT encoder (patch embedding
+ the decoder's own ``Block`` with ``causal=False``) and a linear head on the CLS token (or the mean of the patch
tokens); ``mobilenet-v2`` — ``models.mobilenet.MobileNetV2ForImageClassification``, a new head over torchvision's
ImageNet MobileNetV2 (``init: pretrained``) or a randomly initialised one (``init: scratch``), with ``freeze: all``
(only the head trains), ``partial`` (the last ``train_blocks`` backbone modules too) or ``none``. Both train with
cross-entropy, optionally label-smoothed (``model.label_smoothing``).

Data ``fashion-mnist``: Debian's
``dataset-fashion-mnist`` (Zalando's IDX files, read by ``data.multimodal.load_fashion_mnist``): the 60,000
training images minus ``val_size`` held out by a permutation fixed by seed 0 (so every run validates on the same
images), and the official 10,000-image test set, read only by ``evaluate_run`` (``omnigpt eval``) and the final
evaluation. Training rows are a pure function of (seed, global sample index): an epoch-wise seeded permutation,
then per image a random shift of up to ``max_shift`` pixels (zero padding) and a horizontal flip — DeiT-style
augmentation cut down to what 28×28 grey clothes allow. Data ``openclipart``: Debian ``openclipart-png``, ten
category folders (``data/imagesets.py``: deduplicated by content, split by a hash of each image into train / val /
test, rendered on white at the model's input size); the same shift (white fill) and flip augmentation.

Evaluation: accuracy and loss on the validation images every ``eval_interval`` steps (the curve in
``metrics.jsonl``); ``omnigpt eval RUN`` → ``accuracy`` and ``macro_f1`` on the test set (scikit-learn's), a
confusion-matrix PNG, the validation-accuracy curve, and baselines fitted in the same call on the same training
images. Fashion-MNIST: nearest centroid and multinomial logistic regression on pixels; clip art: the majority class
and logistic regression on the frozen ImageNet MobileNetV2's pooled 1280-d features (the linear-probe ceiling a
frozen backbone's head has to reach, without dropout or augmentation).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from omnigpt.apps.common.figures import confusion_png
from omnigpt.apps.common.images import AnyClassifierConfig, predict, split_train_val, to_pixels
from omnigpt.apps.image_classify.evaluate import feature_baselines, pixel_baselines, plot_curve, scores
from omnigpt.checkpoints.state import load_model, saved_recipe
from omnigpt.data.imagesets import CLIPART_CLASSES, CLIPART_DIR, ImageFolderSet, load_image_folder
from omnigpt.data.multimodal import FASHION_MNIST_CLASSES, load_fashion_mnist
from omnigpt.models.mobilenet import (
    MobileNetClassifierConfig,
    MobileNetV2Config,
    MobileNetV2ForImageClassification,
)
from omnigpt.models.vision import ImageClassifierConfig, VisionConfig, ViTForImageClassification
from omnigpt.train.recipe import RecipeError
from omnigpt.train.task import ClassifierLoss, Task

FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530  # the training images' pixel mean and std (in [0, 1])


@dataclass
class ImageDataSpec:
    """Fashion-MNIST from Debian ``dataset-fashion-mnist`` (validation images come out of the training split), or
    a category-folder set (``openclipart``: Debian ``openclipart-png``) split by image into train / val / test."""

    dataset: Literal["fashion-mnist", "openclipart"] = "fashion-mnist"
    val_size: int = 5000  # fashion-mnist: training images held out for the periodic evaluation (permutation, seed 0)
    limit: int | None = None  # fashion-mnist: the first N training (and test) images only: quick trials and tests
    max_shift: int = 2  # augmentation: random translation by up to this many pixels (0: none)
    flip: bool = True  # augmentation: horizontal flip with probability 1/2
    root: str | None = None  # openclipart: the folder of class folders (None: /usr/share/openclipart/png)
    classes: list[str] | None = None  # openclipart: class folders (None: the ten of data.imagesets.CLIPART_CLASSES)
    val_fraction: float = 0.1  # openclipart: share of images (by content hash) for validation
    test_fraction: float = 0.2  # openclipart: share for the test split (read by ``omnigpt eval`` only)
    split_seed: int = 0  # openclipart: the hash split's seed (fixed: every run sees the same test images)


@dataclass
class ImageModelSpec:
    """The backbone and its head. ``vit``: a ViT preset (``models.vision.VISION_PRESETS``) with ``VisionConfig``
    overrides; ``mobilenet-v2``: a MobileNetV2 preset at ``image_size``, ImageNet-pretrained or from scratch, with
    ``freeze`` deciding what trains."""

    backbone: Literal["vit", "mobilenet-v2"] = "vit"
    preset: str | None = None  # None: vit-fmnist / mobilenet-v2
    vision: dict[str, Any] = field(default_factory=dict)  # vit: e.g. {patch_size: 4, n_layer: 6}
    pool: Literal["cls", "mean"] = "cls"  # vit
    head_dropout: float = 0.0  # vit (MobileNetV2 keeps its own dropout 0.2 before the head)
    init: Literal["pretrained", "scratch"] = "pretrained"  # mobilenet-v2: torchvision's ImageNet weights or random
    freeze: Literal["all", "partial", "none"] = "all"  # mobilenet-v2: what of the backbone stays fixed
    train_blocks: int = 4  # mobilenet-v2, freeze partial: trained backbone modules, counted from the top
    image_size: int = 160  # mobilenet-v2: input side in pixels
    label_smoothing: float = 0.0  # cross-entropy target smoothing (Szegedy et al. 2016), both backbones




def classifier_config(spec: ImageModelSpec, labels: tuple[str, ...]) -> AnyClassifierConfig:
    if spec.backbone == "mobilenet-v2":
        return mobilenet_config(spec, labels)
    valid = [f.name for f in dataclasses.fields(VisionConfig) if f.name != "name"]
    if unknown := [k for k in spec.vision if k not in valid]:
        raise RecipeError(f"model.vision: unknown key {unknown[0]!r}; valid keys: {', '.join(valid)}")
    try:
        vision = VisionConfig.from_name(spec.preset or "vit-fmnist", **spec.vision)
        return ImageClassifierConfig(name="recipe", vision=vision, labels=labels, pool=spec.pool,
                                     head_dropout=spec.head_dropout, pixel_mean=FMNIST_MEAN, pixel_std=FMNIST_STD)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"model: {e}") from None


def mobilenet_config(spec: ImageModelSpec, labels: tuple[str, ...]) -> MobileNetClassifierConfig:
    if spec.vision:
        raise RecipeError("model.vision: ViT settings do not apply to backbone mobilenet-v2")
    preset = spec.preset or "mobilenet-v2"
    if spec.init == "pretrained" and preset != "mobilenet-v2":
        raise RecipeError(f"model.init: pretrained weights exist for preset 'mobilenet-v2' only, not {preset!r}")
    try:
        net = MobileNetV2Config.from_name(preset, image_size=spec.image_size)
        return MobileNetClassifierConfig(name="recipe", mobilenet=net, labels=labels, freeze=spec.freeze,
                                         train_blocks=spec.train_blocks)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"model: {e}") from None






def augment(images: np.ndarray, keys: list[int], seed: int, max_shift: int, flip: bool, fill: int = 0) -> np.ndarray:
    """Shift each image (N, H, W) or (N, H, W, C) by (dy, dx) ∈ [-max_shift, max_shift]² (``fill`` the uncovered
    pixels) and flip it left–right with p = 1/2; image i's draw depends only on (seed, keys[i]), whatever batch or
    process it lands in."""
    out = np.zeros_like(images)
    H, W = images.shape[1:3]
    s = max_shift
    pad = ((0, 0), (s, s), (s, s)) + ((0, 0),) * (images.ndim - 3)
    padded = np.pad(images, pad, constant_values=fill)
    for i, key in enumerate(keys):
        rng = np.random.default_rng([seed, key])
        dy, dx = rng.integers(0, 2 * s + 1, size=2) if s else (0, 0)
        img = padded[i, dy : dy + H, dx : dx + W]
        out[i] = img[:, ::-1] if flip and rng.random() < 0.5 else img
    return out




def folder_set(data: Any, size: int) -> ImageFolderSet:
    """The recipe's category-folder set rendered at ``size`` (``data`` a spec or the recipe dict of a saved run)."""
    get = data.get if isinstance(data, dict) else lambda key, default=None: getattr(data, key, default)
    return load_image_folder(get("root") or CLIPART_DIR, get("classes") or CLIPART_CLASSES, size,
                             seed=get("split_seed", 0), val_fraction=get("val_fraction", 0.1),
                             test_fraction=get("test_fraction", 0.2))


class ImageClassifyTask(Task):
    name = "image-classify"
    data_spec, model_spec = ImageDataSpec, ImageModelSpec

    @classmethod
    def check_recipe(cls, r: Any) -> None:
        d, m = r.data, r.model
        if d.val_size <= 0 or d.max_shift < 0 or (d.limit is not None and d.limit <= d.val_size):
            raise RecipeError("data: val_size must be > 0, max_shift >= 0, and limit (when set) > val_size")
        if not 0 <= m.label_smoothing < 1:
            raise RecipeError(f"model.label_smoothing must be in [0, 1), got {m.label_smoothing}")
        if d.dataset == "fashion-mnist":
            if m.backbone != "vit":
                raise RecipeError("model.backbone: fashion-mnist (28×28 grey) trains the vit backbone; "
                                  "mobilenet-v2 fine-tunes on data.dataset openclipart")
            classifier_config(m, FASHION_MNIST_CLASSES)
            return
        if m.backbone != "mobilenet-v2":
            raise RecipeError("model.backbone: data.dataset openclipart (RGB pictures) needs backbone mobilenet-v2")
        classes = tuple(d.classes or CLIPART_CLASSES)
        if len(set(classes)) != len(classes) or len(classes) < 2:
            raise RecipeError(f"data.classes: need at least 2 distinct class folders, got {list(classes)}")
        classifier_config(m, classes)

    def __init__(self, r: Any) -> None:
        super().__init__(r)
        if r.data.dataset == "fashion-mnist":
            images, labels = load_fashion_mnist("train", limit=r.data.limit)
            tr, va = split_train_val(len(images), r.data.val_size)
            self.train_x, self.train_y = images[tr], labels[tr]
            val_x, val_y = images[va], labels[va]
            self.config: AnyClassifierConfig = classifier_config(r.model, FASHION_MNIST_CLASSES)
            self.fill = 0  # black, the background of Fashion-MNIST
        else:
            data = folder_set(r.data, r.model.image_size)
            self.train_x, self.train_y = data.split("train")
            val_x, val_y = data.split("val")
            self.config = classifier_config(r.model, data.classes)
            self.fill = 255  # white, the background clip art was rendered on
        self.val_pixels, self.val_y = to_pixels(val_x, self.config), torch.from_numpy(val_y)
        model_class = (MobileNetV2ForImageClassification if isinstance(self.config, MobileNetClassifierConfig)
                       else ViTForImageClassification)
        self.model = model_class(self.config)  # (Task.new_model reads self.model, which does not exist yet)
        if isinstance(self.model, MobileNetV2ForImageClassification) and r.model.init == "pretrained":
            from omnigpt.checkpoints.torchvision import load_mobilenet_v2

            self.model.load_backbone(load_mobilenet_v2().state_dict())
        self.preprocessor = None  # the config carries labels and normalisation
        self.tokens_per_step = r.batch_size  # images
        self._perms: dict[int, np.ndarray] = {}

    def train_module(self) -> nn.Module:
        return ClassifierLoss(self.model, self.r.model.label_smoothing)

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
            x = augment(x, keys, self.r.seed, self.r.data.max_shift, self.r.data.flip, self.fill)
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
        if not isinstance(model, ViTForImageClassification | MobileNetV2ForImageClassification):
            raise ValueError(f"{checkpoint}: not an image classifier ({type(model).__name__})")
        cfg = model.config
        recipe = saved_recipe(checkpoint)
        data = recipe.get("data") or {}
        if isinstance(cfg, MobileNetClassifierConfig):
            images = folder_set(data, cfg.image_size)
            test_x, test_y = images.split("test", limit)
            train_x, train_y = images.split("train")
            m = recipe.get("model") or {}
            name = (f"MobileNetV2 ({m.get('init', 'pretrained')}, freeze {cfg.freeze}) on clip art "
                    f"({len(cfg.labels)} classes)")
            about = f"openclipart-png test split, {len(cfg.labels)} classes from {data.get('root') or CLIPART_DIR} " \
                    f"({len(test_y)} images; split sizes {images.sizes()})"
        else:
            test_x, test_y = load_fashion_mnist("test", limit=limit)
            name, about = "ViT on Fashion-MNIST", f"Fashion-MNIST official test set ({len(test_y)} images)"
        t0 = time.perf_counter()
        logits, _ = predict(model, to_pixels(test_x, cfg))
        seconds = time.perf_counter() - t0
        pred = logits.argmax(-1).numpy()
        k = len(cfg.labels)
        res: dict[str, Any] = {"task": cls.name, "data": about, **scores(pred, test_y, k), "n": len(test_y),
                               "images_per_second": round(len(test_y) / seconds, 1)}
        # The baselines see the same training images the run trained on (minus its validation images).
        if isinstance(cfg, MobileNetClassifierConfig):
            res["baselines"] = feature_baselines(train_x, train_y, test_x, test_y, k)
        else:
            train_x, train_y = load_fashion_mnist("train", limit=data.get("limit"))
            tr, _ = split_train_val(len(train_x), data.get("val_size", 5000))
            res["baselines"] = pixel_baselines(train_x[tr], train_y[tr], test_x, test_y, k)
        from sklearn.metrics import confusion_matrix

        out.mkdir(parents=True, exist_ok=True)
        cm = confusion_matrix(test_y, pred, labels=list(range(k)))
        confusion_png(cm, cfg.labels, out / "confusion.png", f"{name}\ntest: {100 * res['accuracy']:.1f}%")
        res["confusion_matrix"] = cm.tolist()
        res["pictures"] = ["confusion.png"]
        run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint
        if plot_curve(run_dir / "metrics.jsonl", out / "accuracy_curve.png"):
            res["pictures"].append("accuracy_curve.png")
        return res


__all__ = ["ImageClassifyTask", "ImageDataSpec", "ImageModelSpec", "feature_baselines",
           "pixel_baselines", "predict", "to_pixels"]
