"""Object detection (task ``detect``): the scene generator's exact boxes and splits, the COCO mAP against
pycocotools, Pix2Seq's token layout, overfitting one scene, the ``object-detection`` pipeline. Fashion-MNIST comes
from Debian ``dataset-fashion-mnist``, backgrounds from scikit-image and scikit-learn."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from omnigpt.apps.detect.task import coco_map
from omnigpt.checkpoints.pretrained import load_pretrained, save_pretrained
from omnigpt.config import GPTConfig
from omnigpt.data.multimodal import FASHION_MNIST_DIR
from omnigpt.models.pix2seq import Pix2Seq, Pix2SeqConfig, encode_targets
from omnigpt.models.vision import VisionConfig

needs_fmnist = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                                  reason="needs Debian dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)")
CLASSES = ("top", "trouser", "dress", "footwear", "bag")


def tiny_pix2seq(seed: int = 0, size: int = 32, max_objects: int = 3, patch: int = 8) -> Pix2Seq:
    torch.manual_seed(seed)
    vision = VisionConfig(image_size=size, patch_size=patch, n_layer=1, n_head=2, n_embd=32, use_cls_token=False)
    gpt = GPTConfig(n_layer=2, n_head=2, n_embd=32)
    return Pix2Seq(Pix2SeqConfig(vision=vision, gpt=gpt, classes=CLASSES, max_objects=max_objects))


# ------------------------------------------------------------------------------------------------------------
# COCO mAP against pycocotools


def pycocotools_map(gts: list, dets: list, k: int) -> tuple[float, float]:
    """(mAP@[.5:.95], mAP@.5) by pycocotools' COCOeval on the same boxes (y0 x0 y1 x1 → COCO's x y w h)."""
    pytest.importorskip("pycocotools", reason="needs pycocotools (the test extra)")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b: np.ndarray) -> list[float]:
        y0, x0, y1, x1 = (float(v) for v in b)
        return [x0, y0, x1 - x0, y1 - y0]

    images, anns, res = [], [], []
    for i, ((gb, gl), (db, dl, ds)) in enumerate(zip(gts, dets, strict=True)):
        images.append({"id": i + 1, "width": 64, "height": 64})
        for b, c in zip(gb, gl, strict=True):
            w = xywh(b)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1, "bbox": w,
                         "area": w[2] * w[3], "iscrowd": 0})
        res += [{"image_id": i + 1, "category_id": int(c) + 1, "bbox": xywh(b), "score": float(s)}
                for b, c, s in zip(db, dl, ds, strict=True)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": c + 1} for c in range(k)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(res), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def test_map_perfect_detections_is_one() -> None:
    gts = [(np.array([[2, 3, 20, 30], [30, 30, 60, 50]]), np.array([0, 1])),
           (np.array([[5, 5, 15, 15]]), np.array([1]))]
    dets = [(b.astype(float), lab, np.array([0.9] * len(lab))) for b, lab in gts]
    m = coco_map(gts, dets, 2)
    assert m["map"] == 1.0 and m["map50"] == 1.0
    assert pycocotools_map(gts, dets, 2) == pytest.approx((1.0, 1.0))


def test_map_known_partial_case_matches_pycocotools() -> None:
    """Two objects of one class; the best-scored detection hits one (IoU 1), the second misses (a false positive),
    the third finds the other at IoU 0.6 — AP@0.5 is (1 + 2/3)/2 interpolated over 101 recall points."""
    gts = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), np.array([0, 0]))]
    shifted = [20, 20, 30, 30 + 2.5]  # IoU 10·10 / (10·12.5) = 0.8
    dets = [(np.array([[0, 0, 10, 10], [40, 40, 50, 50], shifted], dtype=float), np.array([0, 0, 0]),
             np.array([0.9, 0.8, 0.7]))]
    m = coco_map(gts, dets, 1)
    # recall 0.5 at precision 1, recall 1 at precision 2/3: 51 points of 1 and 50 of 2/3
    assert m["map50"] == pytest.approx((51 + 50 * 2 / 3) / 101)
    ref_map, ref_map50 = pycocotools_map(gts, dets, 1)
    assert m["map50"] == pytest.approx(ref_map50) and m["map"] == pytest.approx(ref_map)
    assert m["map"] < m["map50"]  # the 0.8 IoU match fails thresholds above 0.8


def test_map_equals_pycocotools_on_random_boxes() -> None:
    rng = np.random.default_rng(0)
    gts, dets = [], []
    for _ in range(12):
        n = int(rng.integers(0, 4))
        yx = rng.integers(0, 40, size=(n, 2))
        g = np.concatenate([yx, yx + rng.integers(4, 24, size=(n, 2))], 1)
        gts.append((g, rng.integers(0, 3, size=n)))
        m = int(rng.integers(0, 6))
        pick = rng.integers(0, max(n, 1), size=m)
        base = g[pick] if n else np.tile([10, 10, 30, 30], (m, 1))
        d = np.clip(base + rng.normal(0, 2.5, size=(m, 4)), 0, 64)
        d[:, 2:] = np.maximum(d[:, 2:], d[:, :2] + 1)
        labels = np.where(rng.random(m) < 0.7, gts[-1][1][pick] if n else 0, rng.integers(0, 3, size=m))
        dets.append((d, labels, np.round(rng.random(m), 1)))  # rounded scores: ties, broken the same way
    m = coco_map(gts, dets, 3)
    ref_map, ref_map50 = pycocotools_map(gts, dets, 3)
    assert 0 < m["map"] < 1
    assert m["map"] == pytest.approx(ref_map, abs=1e-9) and m["map50"] == pytest.approx(ref_map50, abs=1e-9)


# ------------------------------------------------------------------------------------------------------------
# Scenes


@pytest.fixture(scope="module")
def generators() -> dict:
    pytest.importorskip("skimage", reason="needs scikit-image (backgrounds)")
    if not FASHION_MNIST_DIR.is_dir():
        pytest.skip("needs Debian dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)")
    from omnigpt.apps.detect.data import SceneConfig, SceneGenerator

    cfg = SceneConfig()
    return {split: SceneGenerator(cfg, split, seed=3, item_limit=12000) for split in ("train", "val", "test")}


def test_scene_boxes_are_exact(generators: dict) -> None:
    gen = generators["train"]
    for i in range(60):
        s = gen.scene(i)
        changed = (s.image != s.background).any(-1)  # (S, S) pixels the pasting altered
        inside = np.zeros_like(changed)
        assert 1 <= len(s.labels) <= gen.config.max_objects and len(s.boxes) == len(s.labels)
        for j, (y0, x0, y1, x1) in enumerate(s.boxes):
            inside[y0:y1, x0:x1] = True
            mine = s.owner == j
            rows, cols = np.nonzero(mine)
            # the object's visible pixels lie in its box and touch all four sides (tight)
            assert (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1) == (y0, x0, y1, x1)
            assert s.visible[j] >= 1 - gen.config.max_occlusion - 1e-9
        assert not (changed & ~inside).any()  # nothing outside the boxes differs from the photograph
        assert not (changed & (s.owner < 0)).any()  # and every altered pixel belongs to an object
    a, b = gen.scene(7), gen.scene(7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes)  # a pure function of the index


def test_train_and_test_share_no_background_or_item(generators: dict) -> None:
    from omnigpt.data.multimodal import load_fashion_mnist

    train, val, test = generators["train"], generators["val"], generators["test"]
    assert not set(train.background_names) & set(test.background_names)
    for p in train.backgrounds:  # the photographs themselves differ, not only their names
        assert all(p.shape != q.shape or not np.array_equal(p, q) for q in test.backgrounds)
    assert not set(train.item_ids) & set(val.item_ids)  # indices into the same (training) file
    test_items, _ = load_fashion_mnist("test", limit=12000)
    assert np.array_equal(test.items, test_items)  # the test scenes draw only from the official test images
    used = {int(k) for i in range(50) for k in test.scene(i).items}
    assert used and all(np.array_equal(test.items[k], test_items[k]) for k in used)
    assert {test.scene(i).background_name for i in range(50)} <= set(test.background_names)


# ------------------------------------------------------------------------------------------------------------
# The model


def test_targets_are_class_then_box_in_raster_order() -> None:
    cfg = tiny_pix2seq().config
    t = encode_targets([np.array([[10, 5, 20, 9], [2, 7, 4, 32]])], [np.array([3, 1])], cfg)
    nb = cfg.n_bins
    assert t[0].tolist() == [nb + 1, 2, 7, 3, 31, nb + 3, 10, 5, 19, 8, cfg.eos] + [-100] * 5
    with pytest.raises(ValueError, match="max_objects"):
        encode_targets([np.zeros((4, 4))], [np.zeros(4)], cfg)
    with pytest.raises(ValueError, match="0 <= y0 < y1"):
        encode_targets([np.array([[5, 5, 5, 9]])], [np.array([0])], cfg)


def test_pix2seq_saves_and_loads(tmp_path: Path) -> None:
    model = tiny_pix2seq().eval()
    save_pretrained(model, tmp_path / "det")
    back = load_pretrained(tmp_path / "det")
    assert isinstance(back, Pix2Seq) and back.config == model.config
    x = torch.rand(2, 3, 32, 32)
    a, b = model.detect(x), back.detect(x)
    assert torch.equal(a.boxes, b.boxes) and torch.allclose(a.scores, b.scores)


def test_tiny_pix2seq_overfits_one_scene() -> None:
    """Two boxes on one image: after training, greedy decoding writes them exactly, with high scores, and the
    third (forced) object scores low because the model puts its mass on <eos>."""
    torch.manual_seed(0)
    x = torch.rand(1, 3, 16, 16)
    boxes, labels = np.array([[1, 2, 7, 10], [9, 5, 15, 13]]), np.array([2, 4])
    model = tiny_pix2seq(size=16, patch=4)
    targets = encode_targets([boxes], [labels], model.config)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only spin (10x slower on a busy 2-core machine)
    try:
        for _ in range(150):
            loss = model(x, targets).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    det = model.eval().detect(x)
    assert det.boxes[0, :2].long().tolist() == boxes.tolist() and det.labels[0, :2].tolist() == labels.tolist()
    assert bool((det.scores[0, :2] > 0.9).all()) and float(det.scores[0, 2]) < 0.1
    m = coco_map([(boxes, labels)], [(det.boxes[0].numpy(), det.labels[0].numpy(), det.scores[0].numpy())], 5)
    assert m["map"] == 1.0


# ------------------------------------------------------------------------------------------------------------
# The pipeline


def test_object_detection_pipeline_shape_and_bad_input(tmp_path: Path) -> None:
    from omnigpt import pipeline
    from omnigpt.text.processors import ProcessorError

    save_pretrained(tiny_pix2seq(), tmp_path / "det")
    detect = pipeline("object-detection", model=tmp_path / "det")
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8))
    out = detect(img, threshold=0.0)
    assert len(out) == 3  # every decoded object passes threshold 0
    for d in out:
        assert set(d) == {"score", "label", "box"} and d["label"] in CLASSES and 0 <= d["score"] <= 1
        b = d["box"]
        assert set(b) == {"xmin", "ymin", "xmax", "ymax"} and all(isinstance(v, int) for v in b.values())
        assert 0 <= b["xmin"] < b["xmax"] <= 80 and 0 <= b["ymin"] < b["ymax"] <= 48  # the input's own pixels
    assert [d["score"] for d in out] == sorted((d["score"] for d in out), reverse=True)
    assert all(d["score"] >= 0.999 for d in detect(img, threshold=0.999))
    two = detect([img, np.asarray(img)], threshold=0.0)
    assert len(two) == 2
    for got in two:  # a batch of two gives the single image's detections (scores up to batch round-off)
        assert [(d["label"], d["box"]) for d in got] == [(d["label"], d["box"]) for d in out]
        assert [d["score"] for d in got] == pytest.approx([d["score"] for d in out], rel=1e-4)
    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all")
    with pytest.raises(ProcessorError, match="notes.png"):
        detect(str(bad))
    with pytest.raises(ValueError, match="threshold"):
        detect(img, threshold=2)
    from omnigpt.models.vision import ImageClassifierConfig, ViTForImageClassification

    clf = ViTForImageClassification(ImageClassifierConfig(vision=VisionConfig.from_name("tiny-vit"), labels=CLASSES))
    save_pretrained(clf, tmp_path / "clf")
    with pytest.raises(ValueError, match="not an object detector"):
        pipeline("object-detection", model=tmp_path / "clf")


# ------------------------------------------------------------------------------------------------------------
# The task


@pytest.mark.e2e
@needs_fmnist
def test_detect_task_trains_and_evaluates(tmp_path: Path) -> None:
    """The task through the one Trainer (a few steps), then ``evaluate_run``: metric names, baselines, picture."""
    pytest.importorskip("skimage", reason="needs scikit-image (backgrounds)")
    from omnigpt.apps import load_recipe, task_class
    from omnigpt.train.recipe import RecipeError
    from omnigpt.train.trainer import train

    data = {"image_size": 32, "min_scale": 10, "max_scale": 20, "max_objects": 3, "val_scenes": 8,
            "test_scenes": 12, "item_limit": 2000}
    r = load_recipe(overrides={"task": "detect", "out_dir": str(tmp_path / "run"), "batch_size": 8, "max_steps": 3,
                               "warmup": 1, "eval_interval": 3, "log_interval": 1, "matmul_plan": "off",
                               "progress": False, "threads": 1, "data": data,
                               "model": {"vision": {"n_layer": 1, "n_embd": 32, "n_head": 2},
                                         "gpt": {"n_layer": 1, "n_embd": 32, "n_head": 2}}})
    res = train(r)
    assert res.step == 3 and {"val_loss", "val_map50", "val_map"} <= set(res.eval)
    task = task_class("detect")
    t = task(r)
    a, b, full = t.batch(2, 0, 3), t.batch(2, 3, 5), t.batch(2, 0, 8)  # rows do not depend on the split
    assert torch.equal(torch.cat([a["targets"], b["targets"]]), full["targets"])
    out = task.evaluate_run(Path(res.checkpoint), tmp_path / "eval", limit=10)
    assert 0 <= out["map"] <= out["map50"] <= 1 and set(out["baselines"]) == {"prior_boxes", "segments_logreg"}
    assert 0 <= out["class_agnostic"]["map"] <= out["class_agnostic"]["map50"] <= 1
    assert all(0 <= v["map50"] <= 1 for v in out["baselines"].values())
    assert (tmp_path / "eval" / "boxes.png").is_file() and (tmp_path / "eval" / "map_curve.png").is_file()
    with pytest.raises(RecipeError, match="model.gpt: unknown key 'depth'"):
        load_recipe(overrides={"task": "detect", "max_steps": 1, "model": {"gpt": {"depth": 3}}})
    with pytest.raises(RecipeError, match="max_scale"):
        load_recipe(overrides={"task": "detect", "max_steps": 1, "data": {"image_size": 32}})
