"""Evaluation helpers of the ``image-classify`` task: scores, same-call baselines and figures.

* ``scores`` — accuracy and macro-F1 (scikit-learn's, over every class);
* ``pixel_baselines`` — nearest centroid and multinomial logistic regression on raw pixels (Fashion-MNIST);
* ``feature_baselines`` — the majority class and logistic regression on the frozen ImageNet MobileNetV2's pooled
  features (the real-image sets: the linear probe a frozen backbone's head is measured against);
* ``plot_curve`` (validation accuracy from ``metrics.jsonl``); the confusion matrix is ``common.figures``'.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omnigpt.models.mobilenet import IMAGENET_MEAN, IMAGENET_STD


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


def imagenet_features(images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Pooled 1280-d features of the frozen ImageNet MobileNetV2 for (N, S, S, 3) uint8 RGB images."""
    from omnigpt.checkpoints.torchvision import load_mobilenet_v2

    net = load_mobilenet_v2()
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i : i + batch_size]).float().div(255.0).permute(0, 3, 1, 2)  # (B, 3, S, S)
            out.append(net.features_and_map((x - mean) / std)[0].numpy())  # (B, 1280)
    return np.concatenate(out)


def feature_baselines(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                      k: int) -> dict[str, Any]:
    """The majority class of the training labels, and logistic regression (standardised features, C = 1) on the
    frozen ImageNet MobileNetV2's pooled features, fitted here on the same training images (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    majority = int(np.bincount(train_y, minlength=k).argmax())
    out: dict[str, Any] = {"majority_class": scores(np.full_like(test_y, majority), test_y, k)}
    t0 = time.perf_counter()
    ftr, fte = imagenet_features(train_x), imagenet_features(test_x)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=1.0))
    with threadpool_limits(1):
        clf.fit(ftr, train_y)
    out["logistic_regression_mobilenet_features"] = {**scores(clf.predict(fte), test_y, k),
                                                     "seconds": round(time.perf_counter() - t0, 1)}
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


__all__ = ["feature_baselines", "imagenet_features", "pixel_baselines", "plot_curve", "scores"]
