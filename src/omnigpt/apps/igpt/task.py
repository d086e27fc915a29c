"""The ``igpt`` task: class-conditional image generation on Fashion-MNIST with the GPT decoder (``models/igpt.py``).

Data: Debian's ``dataset-fashion-mnist``; each image is quantized to a grey palette fitted once on the training
pixels (1-D k-means, ``data.levels`` codes) and becomes ``[class] + 784 pixel codes`` in raster order
(optionally downsampled to ``data.image_size`` first). Validation images come out of the training split (a
permutation fixed by seed 0); the official test set is read only by ``omnigpt eval``.

Metrics (``evaluate_run``):

* ``bits_per_dim`` — iGPT's own: the mean negative log2-likelihood per pixel on the test set, over the palette's
  codes (``log2(levels)`` = a uniform guess; not comparable with 8-bit bits/dim);
* ``cas`` — the Classification Accuracy Score (Ravuri & Vinyals 2019, in its "classifier trained on real data"
  form): the accuracy of an ``image-classify`` run (``data.classifier``) on the generated images against the class
  each was conditioned on;
* ``frechet_distance`` — the Fréchet distance between Gaussians fitted to that classifier's pooled features of
  generated and of real test images (FID's formula, Heusel et al. 2017). No Inception weights can be had offline,
  so this is a FID in a Fashion-MNIST ViT's feature space: comparable between runs scored by the same classifier,
  never with published FIDs;
* ``baselines`` — in the same call: bits/dim of independent per-class pixel histograms (a model without
  context), the classifier's accuracy on real test images (CAS's ceiling) and the Fréchet distance between real
  training and real test images (the distance's floor);
* ``samples.png`` (one row per class) and ``samples_<class>.png`` (a grid per class).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from omnigpt.apps.common.images import predict, split_train_val, to_pixels
from omnigpt.checkpoints.state import load_model, saved_recipe
from omnigpt.data.multimodal import FASHION_MNIST_CLASSES, load_fashion_mnist
from omnigpt.models.igpt import IGPT, IGPTConfig, dequantize, fit_palette, quantize
from omnigpt.train.recipe import RecipeError, model_config
from omnigpt.train.task import LossOf, Task


@dataclass
class IGPTDataSpec:
    dataset: Literal["fashion-mnist"] = "fashion-mnist"
    levels: int = 8  # palette size (grey levels, 1-D k-means of the training pixels)
    image_size: int = 28  # < 28: images are downsampled (area average) before quantizing
    val_size: int = 1000  # training images held out for the periodic evaluation
    limit: int | None = None  # the first N training (and test) images only: quick trials and tests
    flip: bool = True  # augmentation: horizontal flip with probability 1/2
    # omnigpt eval: the image-classify run that scores samples (CAS, Fréchet distance); null: bits/dim only
    classifier: str | None = "runs/fmnist-vit"
    samples_per_class: int = 100  # generated per class for CAS and the Fréchet distance
    temperature: float = 1.0


def downsample(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, 28, 28) → uint8 (N, size, size) by area averaging (the identity at size 28)."""
    if size == images.shape[-1]:
        return images
    x = torch.tensor(images, dtype=torch.float32)[:, None]  # (N, 1, 28, 28)
    x = nn.functional.interpolate(x, size=(size, size), mode="area")
    return x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½) between Gaussians fitted to feature rows ``a`` and ``b`` (FID's
    formula; ``scipy.linalg.sqrtm``, imaginary round-off dropped as pytorch-fid does)."""
    from scipy import linalg

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    if not np.isfinite(covmean).all():  # near-singular product: nudge the diagonals (pytorch-fid's fallback)
        off = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + off) @ (s2 + off))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def independent_pixels_bpd(train_codes: np.ndarray, train_y: np.ndarray, test_codes: np.ndarray,
                           test_y: np.ndarray, levels: int) -> float:
    """Bits/dim of the best model without context: each pixel position's code histogram per class (add-one
    smoothing), fitted on the training codes and scored on the test codes."""
    k = int(max(train_y.max(), test_y.max())) + 1
    P = train_codes.shape[1]
    counts = np.ones((k, P, levels))
    for c in range(k):
        rows = train_codes[train_y == c]  # (n_c, P)
        for lv in range(levels):
            counts[c, :, lv] += (rows == lv).sum(0)
    logp = np.log2(counts / counts.sum(-1, keepdims=True))  # (k, P, L)
    picked = logp[test_y[:, None], np.arange(P)[None], test_codes]  # (N, P)
    return float(-picked.mean())


def sample_grid(images: np.ndarray, cols: int, path: Path, scale: int = 3) -> None:
    """uint8 (N, H, W) → one PNG of a grid with ``cols`` columns (1-pixel grey separators), each image enlarged."""
    from PIL import Image

    n, H, W = images.shape
    rows = math.ceil(n / cols)
    grid = np.full((rows * (H + 1) + 1, cols * (W + 1) + 1), 128, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[1 + r * (H + 1) : 1 + r * (H + 1) + H, 1 + c * (W + 1) : 1 + c * (W + 1) + W] = img
    Image.fromarray(grid, mode="L").resize((grid.shape[1] * scale, grid.shape[0] * scale),
                                           Image.Resampling.NEAREST).save(path)


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@torch.no_grad()
def generate(model: IGPT, class_ids: Tensor, temperature: float = 1.0, seed: int = 0,
             batch_size: int = 200) -> np.ndarray:
    """uint8 images (N, H, W) for ``class_ids`` (N,), sampled in batches with a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    out = [dequantize(model.sample(class_ids[i : i + batch_size], temperature, generator=gen),
                      model.config.palette).cpu().numpy() for i in range(0, len(class_ids), batch_size)]
    return np.concatenate(out)


@torch.no_grad()
def test_bits_per_dim(model: IGPT, codes: Tensor, labels: Tensor, batch_size: int = 100) -> float:
    model.eval()
    return float(torch.cat([model.bits_per_dim(codes[i : i + batch_size], labels[i : i + batch_size])
                            for i in range(0, len(codes), batch_size)]).mean())


class IGPTTask(Task):
    name = "igpt"
    data_spec, model_spec = IGPTDataSpec, dict[str, Any]  # model: {"preset": name, **GPTConfig overrides}

    @classmethod
    def check_recipe(cls, r: Any) -> None:
        d = r.data
        if not 2 <= d.levels <= 256 or not 2 <= d.image_size <= 28 or d.val_size <= 0 or d.samples_per_class <= 0:
            raise RecipeError("data: levels in [2, 256], image_size in [2, 28], val_size and samples_per_class > 0")
        if d.limit is not None and d.limit <= d.val_size:
            raise RecipeError(f"data.limit ({d.limit}) must exceed data.val_size ({d.val_size})")
        if d.temperature < 0:
            raise RecipeError(f"data.temperature: must be >= 0, got {d.temperature}")
        model_config(r.model)

    def __init__(self, r: Any) -> None:
        super().__init__(r)
        images, labels = load_fashion_mnist("train", limit=r.data.limit)
        images = downsample(images, r.data.image_size)
        tr, va = split_train_val(len(images), r.data.val_size)
        palette = fit_palette(images[tr], r.data.levels)
        self.config = IGPTConfig(name="recipe", gpt=model_config(r.model), palette=palette,
                                 classes=FASHION_MNIST_CLASSES, image_size=r.data.image_size)
        self.model = IGPT(self.config)
        self.preprocessor = None  # the config carries the palette and the class names
        codes = quantize(torch.from_numpy(images), palette).flatten(1)  # (N, H·W)
        self.train_codes, self.train_y = codes[tr], torch.from_numpy(labels[tr])
        self.val_codes, self.val_y = codes[va], torch.from_numpy(labels[va])
        self.tokens_per_step = r.batch_size * self.config.pixels
        self._perms: dict[int, np.ndarray] = {}

    def train_module(self) -> nn.Module:
        return LossOf(self.model)

    def batch(self, step: int, start: int, count: int) -> dict[str, Tensor]:
        n = len(self.train_codes)
        keys = [step * self.r.batch_size + start + j for j in range(count)]
        rows = []
        for g in keys:
            epoch = g // n
            if epoch not in self._perms:
                self._perms = {epoch: np.random.default_rng([self.r.seed, epoch]).permutation(n)}
            rows.append(int(self._perms[epoch][g % n]))
        codes = self.train_codes[rows]  # (count, H·W)
        if self.r.data.flip:
            S = self.config.image_size
            flip = torch.tensor([np.random.default_rng([self.r.seed, g]).random() < 0.5 for g in keys])
            codes = torch.where(flip[:, None], codes.view(-1, S, S).flip(-1).reshape(count, -1), codes)
        return {"pixel_codes": codes, "class_ids": self.train_y[rows]}

    @torch.no_grad()
    def evaluate(self, limit: int | None, dtype: torch.dtype | None, loss_module: nn.Module | None,
                 ) -> dict[str, Any]:
        """Next-pixel loss (nats) and bits/dim on the first ``limit`` validation images."""
        codes, y = self.val_codes[:limit], self.val_y[:limit]
        dev = next(self.model.parameters()).device
        total = 0.0
        for i in range(0, len(codes), 100):
            c = codes[i : i + 100]
            total += float(self.model(c.to(dev), y[i : i + 100].to(dev)).loss) * len(c)
        loss = total / len(codes)
        return {"val_loss": loss, "val_bits_per_dim": loss / math.log(2)}

    @classmethod
    def evaluate_run(cls, checkpoint: Path, out: Path, limit: int | None = None) -> dict[str, Any]:
        model = load_model(checkpoint)
        if not isinstance(model, IGPT):
            raise ValueError(f"{checkpoint}: not an iGPT model ({type(model).__name__})")
        cfg = model.config
        data = IGPTDataSpec(**saved_recipe(checkpoint).get("data", {}))
        test_x, test_y = load_fashion_mnist("test", limit=limit)
        small = downsample(test_x, cfg.image_size)
        codes = quantize(torch.from_numpy(small), cfg.palette).flatten(1)
        t0 = time.perf_counter()
        bpd = test_bits_per_dim(model, codes, torch.from_numpy(test_y))
        res: dict[str, Any] = {"task": cls.name, "data": f"Fashion-MNIST official test set ({len(test_y)} images)",
                               "bits_per_dim": round(bpd, 4), "levels": cfg.levels, "palette": list(cfg.palette),
                               "uniform_bits_per_dim": round(math.log2(cfg.levels), 4),
                               "bpd_seconds": round(time.perf_counter() - t0, 1)}
        train_x, train_y = load_fashion_mnist("train", limit=data.limit)
        tr, _ = split_train_val(len(train_x), data.val_size)
        train_codes = quantize(torch.from_numpy(downsample(train_x[tr], cfg.image_size)), cfg.palette).flatten(1)
        baselines: dict[str, Any] = {"independent_pixels_bits_per_dim": round(independent_pixels_bpd(
            train_codes.numpy(), train_y[tr], codes.numpy(), test_y, cfg.levels), 4)}
        # Samples: samples_per_class for every class (fewer under --limit), seeded.
        per = data.samples_per_class if limit is None else max(1, min(data.samples_per_class, limit // 10))
        k = len(cfg.classes)
        cond = torch.arange(k).repeat_interleave(per)
        t0 = time.perf_counter()
        gen = generate(model, cond, data.temperature)  # (k·per, S, S)
        res["samples"] = len(gen)
        res["sample_seconds"] = round(time.perf_counter() - t0, 1)
        out.mkdir(parents=True, exist_ok=True)
        pictures = ["samples.png"]
        show = min(per, 10)
        sample_grid(np.concatenate([gen[c * per : c * per + show] for c in range(k)]), show, out / "samples.png")
        for c, name in enumerate(cfg.classes):
            sample_grid(gen[c * per : c * per + min(per, 64)], 8, out / f"samples_{slug(name)}.png")
            pictures.append(f"samples_{slug(name)}.png")
        res["pictures"] = pictures
        if data.classifier:
            clf = load_model(data.classifier if (Path(data.classifier) / "config.json").is_file()
                             else _newest(Path(data.classifier)))
            ccfg = clf.config
            g_logits, g_feats = predict(clf, to_pixels(upsample(gen, 28), ccfg))
            r_logits, r_feats = predict(clf, to_pixels(test_x, ccfg))
            tr_sub = tr[np.random.default_rng(0).permutation(len(tr))[: len(test_x)]]
            _, t_feats = predict(clf, to_pixels(train_x[tr_sub], ccfg))
            res["classifier"] = str(data.classifier)
            res["cas"] = round(float((g_logits.argmax(-1) == cond).float().mean()), 4)
            res["frechet_distance"] = round(frechet_distance(g_feats.numpy(), r_feats.numpy()), 3)
            res["frechet_space"] = f"the classifier's pooled ViT features ({g_feats.shape[1]}-d), not Inception"
            baselines["classifier_accuracy_on_real_test"] = round(
                float((r_logits.argmax(-1) == torch.from_numpy(test_y)).float().mean()), 4)
            baselines["frechet_distance_real_train_vs_test"] = round(
                frechet_distance(t_feats.numpy(), r_feats.numpy()), 3)
            # Quantizing real images to the palette alone moves them this far (what the palette costs).
            q_test = dequantize(quantize(torch.from_numpy(small), cfg.palette), cfg.palette).numpy()
            _, q_feats = predict(clf, to_pixels(upsample(q_test, 28), ccfg))
            baselines["frechet_distance_quantized_test_vs_test"] = round(
                frechet_distance(q_feats.numpy(), r_feats.numpy()), 3)
        res["baselines"] = baselines
        return res


def upsample(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, s, s) → (N, size, size), nearest neighbour (the identity at s = size)."""
    if images.shape[-1] == size:
        return images
    x = torch.from_numpy(images)[:, None].float()
    return nn.functional.interpolate(x, size=(size, size), mode="nearest")[:, 0].to(torch.uint8).numpy()


def _newest(run: Path) -> Path:
    from omnigpt.checkpoints.state import resolve_checkpoint

    return resolve_checkpoint(run)


__all__ = ["IGPTDataSpec", "IGPTTask", "frechet_distance", "generate", "independent_pixels_bpd", "sample_grid"]
