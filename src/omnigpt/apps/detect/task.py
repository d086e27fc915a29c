"""The ``detect`` task: object detection as token prediction (Pix2Seq, ``models/pix2seq.py``) on composed scenes.

Data: ``apps/detect/data.py`` — Fashion-MNIST items pasted onto real photographs with exact boxes. Training scenes are
drawn on the fly (scene g of the run is a pure function of (seed, g): no epoch repeats a scene); validation scenes
use the training photographs with held-out items; the test scenes (``test_scenes`` of them, seed ``test_seed``,
the same for every run) use photographs and items that training never sees.

Metrics (``evaluate_run``, ``omnigpt eval RUN``): COCO box mAP — ``map`` (mean over IoU 0.50:0.05:0.95) and
``map50`` — computed by ``coco_map``, a numpy transcription of pycocotools' ``COCOeval`` for boxes (greedy
matching by score, 101-point interpolated precision, classes without ground truth skipped; tested equal to
pycocotools), plus per-class AP@0.5, and two baselines measured in the same call on the same test scenes:

* ``prior_boxes`` — a detector that never looks at the image: k-means centres of the training boxes, each emitted
  for every class, scored by how often that class and that box shape occur in training;
* ``segments_logreg`` — a classic pipeline (R-CNN's shape with pre-deep-learning parts): Felzenszwalb graph
  segmentation (scikit-image) proposes regions, each region's box is cropped to 28×28 grey and classified by a
  logistic regression (scikit-learn) fitted here on crops of training-scene boxes and of background proposals;
  the score is the probability of the predicted class.

``boxes.png`` shows test scenes with the predicted boxes (coloured, class and score) over the true ones (white).
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from omnigpt.apps.detect.data import Scene, SceneConfig, SceneGenerator
from omnigpt.checkpoints.state import load_model, saved_recipe
from omnigpt.config import GPTConfig
from omnigpt.models.pix2seq import Pix2Seq, Pix2SeqConfig, encode_targets
from omnigpt.models.vision import VisionConfig
from omnigpt.train.recipe import RecipeError
from omnigpt.train.task import LossOf, Task, evaluating

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)


@dataclass
class DetectDataSpec:
    """Composed scenes (``data.scenes.SceneConfig``) and how many of them evaluate."""

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    min_scale: int = 16
    max_scale: int = 36
    class_set: str = "fmnist5"  # fmnist5 (top, trouser, dress, footwear, bag) or fmnist10
    val_scenes: int = 300
    test_scenes: int = 500
    test_seed: int = 0  # the test scenes: the same for every run
    item_limit: int | None = None  # read only the first N Fashion-MNIST images (tests)


@dataclass
class DetectModelSpec:
    """``VisionConfig`` and ``GPTConfig`` fields of the encoder and the decoder (vocabulary and context derived)."""

    vision: dict[str, Any] = field(default_factory=dict)  # e.g. {patch_size: 8, n_layer: 3, conv_stem: 16}
    gpt: dict[str, Any] = field(default_factory=dict)  # e.g. {n_layer: 4, n_head: 4, n_embd: 128}


def scene_config(d: DetectDataSpec) -> SceneConfig:
    try:
        return SceneConfig(image_size=d.image_size, min_objects=d.min_objects, max_objects=d.max_objects,
                           min_scale=d.min_scale, max_scale=d.max_scale, class_set=d.class_set)
    except ValueError as e:
        raise RecipeError(f"data: {e}") from None


def pix2seq_config(spec: DetectModelSpec, scenes: SceneConfig) -> Pix2SeqConfig:
    for what, cls, given in (("vision", VisionConfig, spec.vision), ("gpt", GPTConfig, spec.gpt)):
        valid = [f.name for f in dataclasses.fields(cls) if f.name not in ("name", "extra")]
        if unknown := [k for k in given if k not in valid]:
            raise RecipeError(f"model.{what}: unknown key {unknown[0]!r}; valid keys: {', '.join(valid)}")
    try:
        vision = VisionConfig(**{"patch_size": 8, "n_layer": 3, "n_head": 4, "n_embd": 128, **spec.vision,
                                 "name": "pix2seq-vit", "image_size": scenes.image_size, "use_cls_token": False})
        gpt = GPTConfig(**{"n_layer": 4, "n_head": 4, "n_embd": 128, **spec.gpt, "name": "pix2seq-gpt"})
        return Pix2SeqConfig(name="recipe", vision=vision, gpt=gpt, classes=scenes.classes,
                             max_objects=scenes.max_objects)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"model: {e}") from None


def to_pixels(scenes: list[Scene]) -> Tensor:
    """Scenes → (B, 3, S, S) float32 in [0, 1]."""
    return torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float().div(255.0)


# ------------------------------------------------------------------------------------------------------------
# COCO mAP


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (n, m) of boxes (n, 4) and (m, 4), both y0 x0 y1 x1 (continuous; pycocotools' bbox IoU)."""
    y0 = np.maximum(a[:, None, 0], b[None, :, 0])
    x0 = np.maximum(a[:, None, 1], b[None, :, 1])
    y1 = np.minimum(a[:, None, 2], b[None, :, 2])
    x1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def coco_map(ground_truth: list[tuple[np.ndarray, np.ndarray]],
             detections: list[tuple[np.ndarray, np.ndarray, np.ndarray]], num_classes: int,
             max_dets: int = 100) -> dict[str, Any]:
    """COCO box AP as pycocotools' ``COCOeval`` computes it (area "all", maxDets ``max_dets``, no crowd boxes).

    ``ground_truth[i]`` = (boxes (n, 4), labels (n,)) of image i; ``detections[i]`` = (boxes (m, 4), labels (m,),
    scores (m,)); boxes y0 x0 y1 x1. Returns ``map`` (IoU .50:.95), ``map50``, ``map75`` and ``ap50_per_class``
    (None for a class without ground truth)."""
    T, R = len(IOU_THRESHOLDS), np.linspace(0.0, 1.0, 101)
    precision = -np.ones((T, len(R), num_classes))
    for c in range(num_classes):
        scores_all: list[np.ndarray] = []
        matched_all: list[np.ndarray] = []  # (T, m_i) per image: det matched at threshold t
        n_gt = 0
        for (gb, gl), (db, dl, ds) in zip(ground_truth, detections, strict=True):
            g = np.asarray(gb, dtype=np.float64).reshape(-1, 4)[np.asarray(gl) == c]
            keep = np.asarray(dl) == c
            d, s = np.asarray(db, dtype=np.float64).reshape(-1, 4)[keep], np.asarray(ds, dtype=np.float64)[keep]
            order = np.argsort(-s, kind="mergesort")[:max_dets]
            d, s = d[order], s[order]
            n_gt += len(g)
            ious = box_iou(d, g) if len(d) and len(g) else np.zeros((len(d), len(g)))
            matched = np.zeros((T, len(d)), dtype=bool)
            for t, thr in enumerate(IOU_THRESHOLDS):
                taken = np.zeros(len(g), dtype=bool)
                for i in range(len(d)):
                    best, m = min(thr, 1 - 1e-10), -1
                    for j in range(len(g)):
                        if taken[j] or ious[i, j] < best:
                            continue
                        best, m = ious[i, j], j
                    if m >= 0:
                        taken[m], matched[t, i] = True, True
            scores_all.append(s)
            matched_all.append(matched)
        if n_gt == 0:
            continue
        scores = np.concatenate(scores_all) if scores_all else np.zeros(0)
        order = np.argsort(-scores, kind="mergesort")
        tp_all = np.concatenate(matched_all, axis=1)[:, order] if scores_all else np.zeros((T, 0), dtype=bool)
        for t in range(T):
            tp = np.cumsum(tp_all[t]).astype(np.float64)
            fp = np.cumsum(~tp_all[t]).astype(np.float64)
            rc = tp / n_gt
            pr = (tp / np.maximum(tp + fp, np.spacing(1))).tolist()
            for i in range(len(pr) - 1, 0, -1):  # the precision envelope (monotone from the right)
                pr[i - 1] = max(pr[i - 1], pr[i])
            inds = np.searchsorted(rc, R, side="left")
            q = np.zeros(len(R))
            for ri, pi in enumerate(inds):
                if pi < len(pr):
                    q[ri] = pr[pi]
            precision[t, :, c] = q

    def mean(p: np.ndarray) -> float:
        return float(p[p > -1].mean()) if (p > -1).any() else -1.0

    per_class = [None if precision[0, 0, c] < 0 else round(float(precision[0, :, c].mean()), 4)
                 for c in range(num_classes)]
    return {"map": mean(precision), "map50": mean(precision[0]), "map75": mean(precision[5]),
            "ap50_per_class": per_class}


# ------------------------------------------------------------------------------------------------------------
# Running the model


@torch.no_grad()
def detect_scenes(model: Pix2Seq, scenes: list[Scene], batch_size: int = 100,
                  dtype: torch.dtype | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(boxes (M, 4), labels (M,), scores (M,)) per scene."""
    with evaluating(model):
        dev = next(model.parameters()).device
        out = []
        for i in range(0, len(scenes), batch_size):
            x = to_pixels(scenes[i : i + batch_size]).to(dev)
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                det = model.detect(x)
            for b in range(len(x)):
                out.append((det.boxes[b].cpu().numpy(), det.labels[b].cpu().numpy(),
                            det.scores[b].float().cpu().numpy()))
    return out


def truth(scenes: list[Scene]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(s.boxes, s.labels) for s in scenes]


# ------------------------------------------------------------------------------------------------------------
# Baselines and the picture

Detections = list[tuple[np.ndarray, np.ndarray, np.ndarray]]


def prior_boxes(fit: list[Scene], test: list[Scene], k: int, n_boxes: int = 8) -> Detections:
    """The same detections for every test scene: ``n_boxes`` k-means centres of the training boxes × every class,
    scored P(class) · P(box cluster) as counted on the training scenes. It never looks at the image."""
    from sklearn.cluster import KMeans

    boxes = np.concatenate([s.boxes for s in fit]).astype(np.float64)
    labels = np.concatenate([s.labels for s in fit])
    km = KMeans(n_clusters=n_boxes, n_init=4, random_state=0).fit(boxes)
    p_box = np.bincount(km.labels_, minlength=n_boxes) / len(boxes)
    p_cls = np.bincount(labels, minlength=k) / len(labels)
    b = np.tile(km.cluster_centers_, (k, 1))  # (k·n_boxes, 4)
    lab = np.repeat(np.arange(k), n_boxes)
    sc = p_cls[lab] * np.tile(p_box, k)
    return [(b, lab, sc) for _ in test]


def segment_proposals(image: np.ndarray) -> np.ndarray:
    """Boxes (n, 4) of Felzenszwalb–Huttenlocher graph segments (scikit-image), minus slivers and the backdrop."""
    from skimage.segmentation import felzenszwalb

    seg = felzenszwalb(image, scale=60, sigma=0.5, min_size=20)
    S = image.shape[0]
    out = []
    for v in range(seg.max() + 1):
        rows, cols = np.nonzero(seg == v)
        if len(rows) == 0:
            continue
        y0, x0, y1, x1 = rows.min(), cols.min(), rows.max() + 1, cols.max() + 1
        if min(y1 - y0, x1 - x0) >= 5 and (y1 - y0) * (x1 - x0) <= 0.6 * S * S:
            out.append((y0, x0, y1, x1))
    return np.array(out, dtype=np.float64).reshape(-1, 4)


def crop_features(image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(n, 784): each box cropped, grey, resized to 28×28, in [0, 1]."""
    from PIL import Image

    grey = Image.fromarray(image).convert("L")
    return np.stack([np.asarray(grey.crop((int(x0), int(y0), int(x1), int(y1))).resize((28, 28)), np.float32)
                     .ravel() / 255.0 for y0, x0, y1, x1 in boxes]) if len(boxes) else np.zeros((0, 784))


def segments_logreg(fit: list[Scene], test: list[Scene], k: int) -> Detections:
    """Segment proposals classified by a logistic regression over k classes + background (see the docstring)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    X, y = [], []
    for s in fit:
        X.append(crop_features(s.image, s.boxes))
        y.append(s.labels)
        props = segment_proposals(s.image)
        if len(props) and len(s.boxes):
            neg = props[box_iou(props, s.boxes.astype(np.float64)).max(1) < 0.3][:3]
            X.append(crop_features(s.image, neg))
            y.append(np.full(len(neg), k))
    clf = LogisticRegression(max_iter=300, C=0.5)
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 300 lbfgs iterations: enough for a baseline
        clf.fit(np.concatenate(X), np.concatenate(y))
    out = []
    for s in test:
        props = segment_proposals(s.image)
        if not len(props):
            out.append((np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0)))
            continue
        p = clf.predict_proba(crop_features(s.image, props))[:, :k]  # (n, k): background column dropped
        out.append((props, p.argmax(1), p.max(1)))
    return out


def boxes_png(scenes: list[Scene], dets: Detections, classes: tuple[str, ...], path: Path, title: str,
              min_score: float = 0.3, cols: int = 6, scale: int = 4) -> None:
    """A grid of scenes: true boxes white, predictions (score >= ``min_score``) coloured by class."""
    from PIL import Image, ImageDraw

    from omnigpt.apps.common.figures import draw_boxes

    tiles = []
    for s, (b, lab, sc) in zip(scenes, dets, strict=True):
        keep = sc >= min_score
        tiles.append(draw_boxes(s.image, b[keep].tolist(), [classes[c] for c in lab[keep]], sc[keep].tolist(),
                                truth=s.boxes.tolist(), scale=scale, colors=lab[keep].tolist()))
    W, H = tiles[0].size
    rows = (len(tiles) + cols - 1) // cols
    grid = Image.new("RGB", (cols * (W + 4) + 4, rows * (H + 4) + 24), (40, 40, 40))
    ImageDraw.Draw(grid).text((6, 5), f"{title} (white: truth; coloured: predicted, score >= {min_score})",
                              fill=(255, 255, 255))
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        grid.paste(t, (4 + c * (W + 4), 24 + r * (H + 4)))
    grid.save(path)


def plot_map_curve(metrics_file: Path, png: Path) -> bool:
    """Validation mAP@0.5 and mAP against the step, from a run's ``metrics.jsonl``; False when it holds none."""
    if not metrics_file.is_file():
        return False
    rows = [json.loads(ln) for ln in metrics_file.read_text().splitlines() if ln.strip()]
    pts = [(r["step"], r["val_map50"], r["val_map"]) for r in rows if "val_map50" in r]
    times = {r["step"]: r["time"] for r in rows if "time" in r}
    if not pts:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", ms=3, label="val mAP@0.5")
    ax.plot([p[0] for p in pts], [p[2] for p in pts], "s-", ms=3, label="val mAP@[.5:.95]")
    ax.set_xlabel("step")
    ax.set_ylabel("mAP")
    ax.grid(alpha=0.3)
    ax.legend()
    if pts[-1][0] in times:
        ax.set_title(f"validation mAP@0.5 {pts[-1][1]:.3f} after {times[pts[-1][0]] / 60:.1f} min of training")
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return True


class DetectTask(Task):
    name = "detect"
    data_spec, model_spec = DetectDataSpec, DetectModelSpec

    @classmethod
    def check_recipe(cls, r: Any) -> None:
        d = r.data
        if d.val_scenes <= 0 or d.test_scenes <= 0:
            raise RecipeError("data: val_scenes and test_scenes must be > 0")
        pix2seq_config(r.model, scene_config(d))

    def __init__(self, r: Any) -> None:
        super().__init__(r)
        self.scenes = scene_config(r.data)
        self.train_gen = SceneGenerator(self.scenes, "train", seed=r.seed, item_limit=r.data.item_limit)
        self.val = SceneGenerator(self.scenes, "val", seed=r.data.test_seed,
                                  item_limit=r.data.item_limit).scenes(range(r.data.val_scenes))
        self.config = pix2seq_config(r.model, self.scenes)
        self.model = Pix2Seq(self.config)
        self.preprocessor = None  # the config carries classes, image size and normalisation
        self.tokens_per_step = r.batch_size * self.config.target_length

    def train_module(self) -> nn.Module:
        return LossOf(self.model)

    def _batch(self, scenes: list[Scene]) -> dict[str, Tensor]:
        return {"pixel_values": to_pixels(scenes),
                "targets": encode_targets([s.boxes for s in scenes], [s.labels for s in scenes], self.config)}

    def batch(self, step: int, start: int, count: int) -> dict[str, Tensor]:
        first = step * self.r.batch_size + start  # global sample index: scene g is a function of (seed, g)
        return self._batch(self.train_gen.scenes(range(first, first + count)))

    @torch.no_grad()
    def evaluate(self, limit: int | None, dtype: torch.dtype | None, loss_module: nn.Module | None,
                 ) -> dict[str, Any]:
        """Loss and COCO mAP on the first ``limit`` validation scenes."""
        scenes = self.val[:limit]
        dev = next(self.model.parameters()).device
        total = 0.0
        for i in range(0, len(scenes), 100):
            b = {k: v.to(dev) for k, v in self._batch(scenes[i : i + 100]).items()}
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                total += float(self.model(**b).loss) * len(b["targets"])
        m = coco_map(truth(scenes), detect_scenes(self.model, scenes, dtype=dtype), len(self.config.classes))
        return {"val_loss": total / len(scenes), "val_map50": m["map50"], "val_map": m["map"]}

    @classmethod
    def evaluate_run(cls, checkpoint: Path, out: Path, limit: int | None = None) -> dict[str, Any]:
        model = load_model(checkpoint)
        if not isinstance(model, Pix2Seq):
            raise ValueError(f"{checkpoint}: not a Pix2Seq detector ({type(model).__name__})")
        cfg = model.config
        recipe = saved_recipe(checkpoint)
        data = DetectDataSpec(**recipe.get("data", {}))
        scfg = scene_config(data)
        n = data.test_scenes if limit is None else min(limit, data.test_scenes)
        test = SceneGenerator(scfg, "test", seed=data.test_seed, item_limit=data.item_limit).scenes(range(n))
        t0 = time.perf_counter()
        dets = detect_scenes(model, test)
        seconds = time.perf_counter() - t0
        k = len(cfg.classes)
        m = coco_map(truth(test), dets, k)
        res: dict[str, Any] = {
            "task": cls.name, "classes": list(cfg.classes),
            "data": f"{n} test scenes ({scfg.image_size}x{scfg.image_size}, {scfg.min_objects}-{scfg.max_objects} "
                    f"objects): Fashion-MNIST test items on photographs never used in training",
            "map50": round(m["map50"], 4), "map": round(m["map"], 4), "map75": round(m["map75"], 4),
            "ap50_per_class": dict(zip(cfg.classes, m["ap50_per_class"], strict=True)),
            "objects": int(sum(len(s.labels) for s in test)), "scenes_per_second": round(n / seconds, 1)}
        # Where the errors are: the same boxes scored with every class merged into one (localization alone).
        agnostic = coco_map([(b, np.zeros_like(lab)) for b, lab in truth(test)],
                            [(b, np.zeros_like(lab), sc) for b, lab, sc in dets], 1)
        res["class_agnostic"] = {"map50": round(agnostic["map50"], 4), "map": round(agnostic["map"], 4)}
        # Baselines fitted on training scenes of the run's own generator (seed from the recipe).
        train = SceneGenerator(scfg, "train", seed=recipe.get("seed", 1337), item_limit=data.item_limit)
        fit = train.scenes(range(2000 if limit is None else 200))
        baselines: dict[str, Any] = {}
        for name, fn, what in (
                ("prior_boxes", prior_boxes, "8 k-means training boxes x every class, scored by training "
                 "frequency; never looks at the image"),
                ("segments_logreg", segments_logreg, "Felzenszwalb segments as proposals, each crop classified by "
                 "a logistic regression (classes + background) fitted on training-scene crops")):
            t0 = time.perf_counter()
            bm = coco_map(truth(test), fn(fit, test, k), k)
            baselines[name] = {"map50": round(bm["map50"], 4), "map": round(bm["map"], 4),
                               "seconds": round(time.perf_counter() - t0, 1), "what": what,
                               "fitted_on_scenes": len(fit)}
        res["baselines"] = baselines
        out.mkdir(parents=True, exist_ok=True)
        boxes_png(test[:24], dets[:24], cfg.classes, out / "boxes.png",
                  f"Pix2Seq on unseen test scenes: mAP@0.5 {res['map50']:.3f}, mAP {res['map']:.3f}")
        res["pictures"] = ["boxes.png"]
        run_dir = checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint
        if plot_map_curve(run_dir / "metrics.jsonl", out / "map_curve.png"):
            res["pictures"].append("map_curve.png")
        return res


__all__ = ["DetectDataSpec", "DetectModelSpec", "DetectTask", "box_iou", "boxes_png", "coco_map", "detect_scenes",
           "prior_boxes", "segments_logreg"]
