"""The image-classify application with a MobileNetV2 backbone: fine-tuning on a category-folder set (Debian
``openclipart-png``; synthetic folders keep the tests fast): the folder set's dedup and per-image splits, the frozen
backbone, torchvision's ImageNet weights, save/reload, the task through the one Trainer and the pipeline on the
fine-tuned run. The ViT classifier is tests/apps/image_classify/test_image_classify.py, the MobileNetV2 model itself
tests/test_mobilenet.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from omnigpt.checkpoints.pretrained import load_pretrained, save_pretrained

# ------------------------------------------------------------------------------------------------------------
# MobileNetV2 fine-tuning on a category-folder set (openclipart-png; synthetic folders keep the tests fast)

needs_clipart = pytest.mark.skipif(not Path("/usr/share/openclipart/png").is_dir(),
                                   reason="needs Debian openclipart-png (/usr/share/openclipart/png)")
SHAPES = ("discs", "bars", "rings")


def write_folder_set(root: Path, per_class: int = 12) -> Path:
    """Three class folders of drawn shapes on transparent canvases (RGBA, random size and colour), plus one exact
    copy inside a class (counted once) and one copy across classes (dropped)."""
    from PIL import ImageDraw

    rng = np.random.default_rng(0)
    for c, name in enumerate(SHAPES):
        (root / name / "sub").mkdir(parents=True)
        for i in range(per_class):
            w, h = (int(v) for v in rng.integers(24, 60, 2))
            im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
            d = ImageDraw.Draw(im)
            colour = tuple(int(v) for v in rng.integers(0, 200, 3))
            box = (2, 2, w - 3, h - 3)
            [d.ellipse(box, fill=colour), d.rectangle((w // 3, 2, 2 * w // 3, h - 3), fill=colour),
             d.ellipse(box, outline=colour, width=4)][c]
            im.save(root / name / f"{i:02d}.png")
    (root / "discs" / "sub" / "00.png").write_bytes((root / "discs" / "00.png").read_bytes())
    (root / "bars" / "sub" / "copy.png").write_bytes((root / "rings" / "01.png").read_bytes())
    return root


def tiny_mobilenet(freeze: str = "none", seed: int = 0) -> Any:
    from omnigpt.models.mobilenet import MobileNetClassifierConfig, MobileNetV2Config, MobileNetV2ForImageClassification

    torch.manual_seed(seed)
    net = MobileNetV2Config.from_name("tiny-mobilenet-v2", image_size=32)
    return MobileNetV2ForImageClassification(MobileNetClassifierConfig(mobilenet=net, labels=SHAPES, freeze=freeze,
                                                                       train_blocks=3))


def test_folder_set_dedups_and_splits_by_image(tmp_path: Path) -> None:
    from omnigpt.data.imagesets import list_image_folder, load_image_folder, split_of

    root = write_folder_set(tmp_path / "set")
    items = list_image_folder(root, SHAPES)
    # 36 files + 2 copies: the in-class copy counts once, rings/01 (also under bars) is dropped from both classes
    assert len(items) == 35 and len({it.digest for it in items}) == 35
    assert [sum(it.label == c for it in items) for c in range(3)] == [12, 12, 11]
    data = load_image_folder(root, SHAPES, size=32, val_fraction=0.2, test_fraction=0.3, cache=False)
    assert data.pixels.shape == (35, 32, 32, 3) and data.pixels.dtype == np.uint8
    assert data.pixels[0, 0, 0].tolist() == [255, 255, 255]  # transparency composited on white, aspect kept
    by = {s: {d for d, sp in zip(data.digests, data.splits, strict=True) if sp == s} for s in ("train", "val", "test")}
    assert not (by["train"] & by["val"] or by["train"] & by["test"] or by["val"] & by["test"])
    assert sum(data.sizes().values()) == 35 and min(data.sizes().values()) > 0
    assert data.splits.tolist() == [split_of(d, 0, 0.2, 0.3) for d in data.digests]  # each image's own hash
    again = load_image_folder(root, SHAPES, size=32, val_fraction=0.2, test_fraction=0.3, seed=1, cache=False)
    assert again.splits.tolist() != data.splits.tolist()  # the seed moves images between splits
    x, y = data.split("test", limit=3)
    assert len(x) == 3 and len(set(y.tolist())) > 1  # a limit spreads over the classes (items sorted by class)
    with pytest.raises(FileNotFoundError, match="no such class folder.*discs"):
        list_image_folder(root, ("discs", "cubes"))


@needs_clipart
def test_clipart_splits_are_disjoint_and_stable() -> None:
    """The real set: the documented sizes, and no image (by content) in two splits."""
    from omnigpt.data.imagesets import CLIPART_CLASSES, CLIPART_DIR, list_image_folder, split_of

    items = list_image_folder(CLIPART_DIR, CLIPART_CLASSES)
    assert len(items) == 2202 and len({it.digest for it in items}) == 2202
    splits = [split_of(it.digest, 0, 0.1, 0.2) for it in items]
    assert {s: splits.count(s) for s in ("train", "val", "test")} == {"train": 1533, "val": 190, "test": 479}


def test_frozen_backbone_keeps_its_weights_and_statistics() -> None:
    """freeze all: one optimizer step through the model's parameter groups changes the head only — every backbone
    weight and BatchNorm running statistic stays bit-identical although the model is in train mode."""
    from omnigpt.train.task import ClassifierLoss

    model = tiny_mobilenet("all")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_module = ClassifierLoss(model, label_smoothing=0.1).train()
    groups = loss_module.parameter_groups()
    assert set(groups) == {"head"}
    opt = torch.optim.AdamW(groups["head"], lr=1e-2)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 3
    for _ in range(2):
        loss = loss_module(pixel_values=x, labels=y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"mobilenet.classifier.1.weight", "mobilenet.classifier.1.bias"}
    assert all(p.grad is None for p in model.mobilenet.features.parameters())
    partial = tiny_mobilenet("partial")
    assert set(ClassifierLoss(partial).parameter_groups()) == {"backbone", "head"}
    n = len(partial.mobilenet.features)
    trained = {i for i, m in enumerate(partial.mobilenet.features) if any(p.requires_grad for p in m.parameters())}
    assert trained == {n - 3, n - 2, n - 1}


def test_pretrained_backbone_is_imagenet_mobilenet() -> None:
    """init pretrained: the fine-tuning model's pooled features are torchvision's ImageNet MobileNetV2's."""
    from omnigpt.checkpoints.torchvision import load_mobilenet_v2
    from omnigpt.models.mobilenet import MobileNetClassifierConfig, MobileNetV2ForImageClassification

    imagenet = load_mobilenet_v2()
    model = MobileNetV2ForImageClassification(MobileNetClassifierConfig(labels=SHAPES, freeze="all")).eval()
    model.load_backbone(imagenet.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        torch.testing.assert_close(model(x).features, imagenet.features_and_map(x)[0], rtol=0, atol=0)
    assert model(x).logits.shape == (2, 3)


def test_mobilenet_classifier_saves_and_reloads_exactly(tmp_path: Path) -> None:
    model = tiny_mobilenet("partial")
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32) * 3)  # moves the trained BatchNorms' running statistics off their init
        model.mobilenet.classifier[1].weight.normal_()
    save_pretrained(model, tmp_path / "mnv2")
    back = load_pretrained(tmp_path / "mnv2")
    assert type(back) is type(model) and back.config == model.config
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(back(x).logits, model.eval()(x).logits)


@pytest.fixture(scope="module")
def mobilenet_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny partly frozen MobileNetV2 trained through the one Trainer on the synthetic folder set."""
    from omnigpt.apps import load_recipe
    from omnigpt.train.trainer import train

    root = tmp_path_factory.mktemp("mobilenet")
    write_folder_set(root / "set")
    r = load_recipe(overrides={"task": "image-classify", "out_dir": str(root / "run"), "batch_size": 8,
                               "max_steps": 3, "warmup": 1, "eval_interval": 3, "log_interval": 1, "dtype": "float32",
                               "matmul_plan": "off", "progress": False,
                               "data": {"dataset": "openclipart", "root": str(root / "set"), "classes": list(SHAPES),
                                        "val_fraction": 0.2, "test_fraction": 0.3, "max_shift": 3},
                               "model": {"backbone": "mobilenet-v2", "preset": "tiny-mobilenet-v2", "init": "scratch",
                                         "freeze": "partial", "train_blocks": 3, "image_size": 32,
                                         "label_smoothing": 0.1}})
    res = train(r)
    return {"recipe": r, "result": res, "root": root}


@pytest.mark.e2e
def test_mobilenet_task_trains_and_evaluates(mobilenet_run: dict[str, Any], tmp_path: Path) -> None:
    from omnigpt.apps import task_class

    res, r = mobilenet_run["result"], mobilenet_run["recipe"]
    assert res.step == 3 and "val_accuracy" in res.eval
    task = task_class("image-classify")(r)
    assert task.train_x.shape[1:] == (32, 32, 3) and task.fill == 255
    a, b, full = task.batch(2, 0, 4), task.batch(2, 4, 4), task.batch(2, 0, 8)
    torch.testing.assert_close(torch.cat([a["pixel_values"], b["pixel_values"]]), full["pixel_values"])
    out = task_class("image-classify").evaluate_run(Path(res.checkpoint), tmp_path / "eval")
    assert 0 <= out["accuracy"] <= 1 and 0 <= out["macro_f1"] <= 1 and out["n"] == np.asarray(
        out["confusion_matrix"]).sum()
    assert set(out["baselines"]) == {"majority_class", "logistic_regression_mobilenet_features"}
    assert (tmp_path / "eval" / "confusion.png").is_file()


@pytest.mark.e2e
def test_pipeline_on_a_fine_tuned_run(mobilenet_run: dict[str, Any]) -> None:
    from omnigpt.hf.pipelines import pipeline
    from omnigpt.models.mobilenet import MobileNetV2ForImageClassification
    from omnigpt.text.processors import ProcessorError

    run = mobilenet_run["root"] / "run"
    clf = pipeline("image-classification", str(run), top_k=3)
    assert isinstance(clf.model, MobileNetV2ForImageClassification)
    path = mobilenet_run["root"] / "set" / "rings" / "05.png"
    one = clf(path)
    assert sorted(d["label"] for d in one) == sorted(SHAPES) and sum(d["score"] for d in one) == pytest.approx(1)
    both = clf([path, Image.open(path)])
    assert [d["label"] for d in both[0]] == [d["label"] for d in both[1]]
    bad = mobilenet_run["root"] / "notes.png"
    bad.write_text("not a picture")
    with pytest.raises(ProcessorError, match="notes.png.*not an image"):
        clf(bad)


def test_mobilenet_recipe_errors_name_the_key() -> None:
    from omnigpt.apps import load_recipe
    from omnigpt.train.recipe import RecipeError

    base = {"task": "image-classify", "max_steps": 1}
    with pytest.raises(RecipeError, match="model.backbone: fashion-mnist"):
        load_recipe(overrides={**base, "model": {"backbone": "mobilenet-v2"}})
    with pytest.raises(RecipeError, match="needs backbone mobilenet-v2"):
        load_recipe(overrides={**base, "data": {"dataset": "openclipart"}})
    with pytest.raises(RecipeError, match="model.init: pretrained weights exist for preset 'mobilenet-v2' only"):
        load_recipe(overrides={**base, "data": {"dataset": "openclipart"},
                               "model": {"backbone": "mobilenet-v2", "preset": "tiny-mobilenet-v2"}})
    with pytest.raises(RecipeError, match="model.freeze: must be one of"):
        load_recipe(overrides={**base, "data": {"dataset": "openclipart"},
                               "model": {"backbone": "mobilenet-v2", "freeze": "some"}})
    with pytest.raises(RecipeError, match="train_blocks"):
        load_recipe(overrides={**base, "data": {"dataset": "openclipart"},
                               "model": {"backbone": "mobilenet-v2", "freeze": "partial", "train_blocks": 19}})
