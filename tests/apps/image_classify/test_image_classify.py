"""The image-classify application with the ViT classifier (task ``image-classify``): overfitting, save/load, the task
through the one Trainer, recipe errors, and the ``image-classification`` pipeline (with iGPT's ``text-to-image``
beside it: bad inputs name the wrong kind of model, and a drawn image classifies). Fashion-MNIST comes from Debian
``dataset-fashion-mnist``; the saved tiny models of the pipeline tests are ``runs`` (tests/apps/conftest.py). iGPT is
tests/apps/igpt/test_igpt.py, MobileNetV2 fine-tuning tests/apps/image_classify/test_mobilenet_finetune.py."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from app_helpers import needs_fmnist, tiny_classifier
from PIL import Image

from omnigpt.checkpoints.pretrained import load_pretrained, save_pretrained
from omnigpt.data.multimodal import FASHION_MNIST_CLASSES
from omnigpt.models.vision import ViTForImageClassification

# ------------------------------------------------------------------------------------------------------------
# The classifier


@needs_fmnist
def test_tiny_vit_overfits_a_handful_of_images() -> None:
    from omnigpt.apps.common.images import to_pixels
    from omnigpt.data.multimodal import load_fashion_mnist

    images, labels = load_fashion_mnist("train", limit=10)
    model = tiny_classifier()
    x, y = to_pixels(images, model.config), torch.from_numpy(labels)
    first = float(model(x, y).loss.detach())
    assert first == pytest.approx(math.log(10), abs=1e-4)  # zero-initialised head: uniform logits
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(100):
        loss = model(x, y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert float(model(x, y).loss.detach()) < 0.1
    assert bool((model(x).logits.argmax(-1) == y).all())


def test_classifier_saves_and_loads_through_the_pretrained_layer(tmp_path: Path) -> None:
    model = tiny_classifier(conv_stem=4)
    with torch.no_grad():
        model.head.weight.normal_()
    save_pretrained(model, tmp_path / "clf")
    back = load_pretrained(tmp_path / "clf")
    assert isinstance(back, ViTForImageClassification) and back.config == model.config
    x = torch.randn(3, 1, 28, 28)
    torch.testing.assert_close(back(x).logits, model.eval()(x).logits)


@pytest.mark.e2e
@needs_fmnist
def test_image_classify_task_trains_and_evaluates(tmp_path: Path) -> None:
    """The task through the one Trainer (a few steps), then ``evaluate_run``: metric names, baselines, pictures."""
    from omnigpt.apps import load_recipe, task_class
    from omnigpt.train.trainer import train

    r = load_recipe(overrides={"task": "image-classify", "out_dir": str(tmp_path / "run"), "batch_size": 16,
                               "max_steps": 4, "warmup": 1, "eval_interval": 2, "log_interval": 2,
                               "matmul_plan": "off", "progress": False,
                               "data": {"limit": 120, "val_size": 20},
                               "model": {"preset": "tiny-vit", "vision": {"image_size": 28, "patch_size": 7,
                                                                          "in_channels": 1}}})
    res = train(r)
    assert res.step == 4 and "val_accuracy" in res.eval
    task = task_class("image-classify")
    t = task(r)
    a, b = t.batch(3, 0, 8), t.batch(3, 8, 8)  # a batch's rows are the same however it is split
    full = t.batch(3, 0, 16)
    torch.testing.assert_close(torch.cat([a["pixel_values"], b["pixel_values"]]), full["pixel_values"])
    assert torch.equal(torch.cat([a["labels"], b["labels"]]), full["labels"])
    out = task.evaluate_run(Path(res.checkpoint), tmp_path / "eval", limit=50)
    assert out["n"] == 50 and 0 <= out["accuracy"] <= 1 and 0 <= out["macro_f1"] <= 1
    assert set(out["baselines"]) == {"nearest_centroid", "logistic_regression"}
    assert np.asarray(out["confusion_matrix"]).sum() == 50
    assert (tmp_path / "eval" / "confusion.png").is_file() and (tmp_path / "eval" / "accuracy_curve.png").is_file()


def test_image_recipe_errors_name_the_key() -> None:
    from omnigpt.apps import load_recipe
    from omnigpt.train.recipe import RecipeError

    with pytest.raises(RecipeError, match="model.vision: unknown key 'depth'"):
        load_recipe(overrides={"task": "image-classify", "max_steps": 1, "model": {"vision": {"depth": 3}}})
    with pytest.raises(RecipeError, match="levels"):
        load_recipe(overrides={"task": "igpt", "max_steps": 1, "data": {"levels": 1}, "model": {"preset": "tiny-gpt2"}})


# ------------------------------------------------------------------------------------------------------------
# Pipelines


def test_image_classification_pipeline_shapes(runs: dict[str, Path]) -> None:
    from omnigpt.hf.pipelines import pipeline

    clf = pipeline("image-classification", str(runs["vit"]), top_k=3)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8))
    path = runs["root"] / "x.png"
    img.save(path)
    one = clf(path)
    assert len(one) == 3 and set(one[0]) == {"label", "score"} and one[0]["label"] in FASHION_MNIST_CLASSES
    assert one[0]["score"] >= one[1]["score"] >= one[2]["score"]
    many = clf([path, img, np.asarray(img.convert("L")), np.zeros((28, 28), np.float32)])
    assert len(many) == 4 and all(len(r) == 3 for r in many)
    assert [d["label"] for d in many[0]] == [d["label"] for d in many[1]]  # a path = the same image decoded
    assert [d["score"] for d in many[0]] == pytest.approx([d["score"] for d in many[1]])
    assert len(clf(img, top_k=10)) == 10
    with pytest.raises(ValueError, match="top_k"):
        clf(img, top_k=11)


def test_pipelines_refuse_bad_inputs(runs: dict[str, Path]) -> None:
    from omnigpt.hf.pipelines import pipeline

    clf = pipeline("image-classification", str(runs["vit"]))
    bad = runs["root"] / "notes.png"
    bad.write_text("this is not an image")
    with pytest.raises(ValueError, match="notes.png"):
        clf(bad)
    with pytest.raises(ValueError, match="shape"):
        clf(np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="not an image classifier"):
        pipeline("image-classification", str(runs["igpt"]))
    draw = pipeline("text-to-image", str(runs["igpt"]))
    with pytest.raises(ValueError, match="Ankle boot"):  # the message lists the valid classes
        draw("a purple giraffe")
    with pytest.raises(ValueError, match="not an image generator"):
        pipeline("text-to-image", str(runs["vit"]))


def test_registered_in_omnigpt_pipeline(runs: dict[str, Path]) -> None:
    from omnigpt.hf.pipelines import pipeline

    img = pipeline("text-to-image", model=str(runs["igpt"]))("Bag", seed=1)[0]["image"]
    top = pipeline("image-classification", model=str(runs["vit"]), top_k=2)(img)
    assert len(top) == 2 and top[0]["label"] in FASHION_MNIST_CLASSES
