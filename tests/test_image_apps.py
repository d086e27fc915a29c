"""Vision applications: the ViT image classifier (task ``image-classify``) and iGPT (task ``igpt``), their pipelines
and ``POST /v1/images/generations``. Fashion-MNIST comes from Debian ``dataset-fashion-mnist``."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from omnigpt.checkpoints.pretrained import load_pretrained, save_pretrained
from omnigpt.config import GPTConfig
from omnigpt.data.multimodal import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR
from omnigpt.models.igpt import IGPT, IGPTConfig, dequantize, fit_palette, quantize
from omnigpt.models.vision import ImageClassifierConfig, VisionConfig, ViTForImageClassification

needs_fmnist = pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                                  reason="needs Debian dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)")
TINY_VIT = VisionConfig.from_name("tiny-vit", image_size=28, patch_size=7, in_channels=1)


def tiny_classifier(seed: int = 0, **vision: Any) -> ViTForImageClassification:
    torch.manual_seed(seed)
    return ViTForImageClassification(ImageClassifierConfig(vision=TINY_VIT.replace(**vision),
                                                           labels=FASHION_MNIST_CLASSES, pixel_mean=0.286,
                                                           pixel_std=0.353))


def tiny_igpt(seed: int = 0, size: int = 4, levels: int = 4) -> IGPT:
    torch.manual_seed(seed)
    gpt = GPTConfig.from_name("tiny-gpt2", n_layer=2, n_head=2, n_embd=32)
    palette = tuple(float(v) for v in np.linspace(0, 255, levels))
    return IGPT(IGPTConfig(gpt=gpt, palette=palette, classes=FASHION_MNIST_CLASSES, image_size=size)).eval()


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
# iGPT


def test_palette_round_trip_and_kmeans() -> None:
    palette = (0.0, 60.0, 130.0, 250.0)
    codes = torch.randint(0, 4, (5, 6, 6))
    assert torch.equal(quantize(dequantize(codes, palette), palette), codes)
    pixels = torch.randint(0, 256, (50, 28, 28), dtype=torch.uint8)
    err = (dequantize(quantize(pixels, palette), palette).float() - pixels.float()).abs()
    gaps = np.diff((0.0, *palette, 255.0))
    assert float(err.max()) <= max(gaps) / 2 + 0.5  # nearest level
    # A histogram with exactly L distinct values: k-means finds them.
    exact = np.array([3] * 50 + [90] * 20 + [200] * 30 + [255] * 5, dtype=np.uint8)
    assert fit_palette(exact, 4) == (3.0, 90.0, 200.0, 255.0)
    with pytest.raises(ValueError):
        fit_palette(exact, 1)


def test_bits_per_dim_by_hand() -> None:
    model = tiny_igpt(levels=4)
    codes = torch.randint(0, 4, (3, 16))
    cls = torch.tensor([0, 5, 9])
    # With every logit zero the model is a uniform guess: exactly log2(4) = 2 bits per pixel.
    with torch.no_grad():
        model.gpt.lm_head.weight.zero_()  # tied to wte: zero embeddings, constant hidden state, zero logits
    torch.testing.assert_close(model.bits_per_dim(codes, cls), torch.full((3,), 2.0))
    # A random model: -mean log2 p(code_t | class, codes < t), each prefix run on its own.
    model = tiny_igpt(seed=1, levels=4)
    with torch.no_grad():
        by_hand = torch.zeros(3)
        for b in range(3):
            seq = [model.config.class_token(int(cls[b]))] + codes[b].tolist()
            for t in range(16):
                logits = model.gpt(torch.tensor([seq[: t + 1]])).logits[0, -1, :4]
                by_hand[b] -= logits.log_softmax(-1)[codes[b, t]] / math.log(2)
        by_hand /= 16
        torch.testing.assert_close(model.bits_per_dim(codes, cls), by_hand, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model(codes, cls).loss / math.log(2), by_hand.mean(), atol=1e-4, rtol=1e-4)


def test_sampling_is_seeded_and_class_conditioned() -> None:
    model = tiny_igpt(size=4, levels=4)
    a = model.sample(torch.tensor([1, 2]), generator=torch.Generator().manual_seed(3))
    b = model.sample(torch.tensor([1, 2]), generator=torch.Generator().manual_seed(3))
    assert a.shape == (2, 4, 4) and torch.equal(a, b) and int(a.max()) < 4
    # Greedy decoding equals the argmax of the full forward pass on its own output (the KV cache is exact).
    g = model.sample(torch.tensor([7]), temperature=0)
    logits = model.gpt(model.sequences(g.flatten(1), torch.tensor([7]))[:, :-1]).logits[..., :4]
    assert torch.equal(logits.argmax(-1), g.flatten(1))
    with pytest.raises(ValueError, match="class indices"):
        model.sample(torch.tensor([10]))


def test_independent_pixels_and_frechet_by_hand() -> None:
    from omnigpt.apps.igpt.task import frechet_distance, independent_pixels_bpd

    train = np.array([[0, 1], [0, 1], [1, 1]])  # 2 pixels, 2 levels, one class
    y = np.zeros(3, dtype=np.int64)
    # add-one: pixel 0 p(0) = 3/5, pixel 1 p(1) = 4/5
    got = independent_pixels_bpd(train, y, np.array([[0, 1]]), np.zeros(1, dtype=np.int64), 2)
    assert got == pytest.approx(-(math.log2(3 / 5) + math.log2(4 / 5)) / 2)
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (4000, 3))
    b = rng.normal(0, 2, (4000, 3)) + np.array([1.0, 0.0, 0.0])
    # diagonal covariances: FD = |Δμ|² + Σ (σa − σb)²  ≈ 1 + 3·1
    assert frechet_distance(a, b) == pytest.approx(4.0, abs=0.3)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_igpt_saves_and_loads(tmp_path: Path) -> None:
    model = tiny_igpt()
    save_pretrained(model, tmp_path / "igpt")
    back = load_pretrained(tmp_path / "igpt")
    assert isinstance(back, IGPT) and back.config == model.config
    codes, cls = torch.randint(0, 4, (2, 16)), torch.tensor([3, 4])
    torch.testing.assert_close(back.bits_per_dim(codes, cls), model.bits_per_dim(codes, cls))


@needs_fmnist
def test_igpt_task_trains_and_evaluates(tmp_path: Path) -> None:
    from omnigpt.apps import load_recipe, task_class
    from omnigpt.train.trainer import train

    r = load_recipe(overrides={"task": "igpt", "out_dir": str(tmp_path / "run"), "batch_size": 8, "max_steps": 3,
                               "warmup": 1, "matmul_plan": "off", "progress": False,
                               "data": {"limit": 60, "val_size": 10, "image_size": 7, "levels": 4,
                                        "classifier": None, "samples_per_class": 2},
                               "model": {"preset": "tiny-gpt2", "n_layer": 1, "n_head": 2, "n_embd": 16}})
    res = train(r)
    assert res.eval["val_bits_per_dim"] == pytest.approx(res.eval["val_loss"] / math.log(2))
    out = task_class("igpt").evaluate_run(Path(res.checkpoint), tmp_path / "eval", limit=20)
    assert 0 < out["bits_per_dim"] < 4 and out["samples"] == 20
    assert "independent_pixels_bits_per_dim" in out["baselines"]
    grid = Image.open(tmp_path / "eval" / "samples.png")
    assert grid.mode == "L" and (tmp_path / "eval" / "samples_sneaker.png").is_file()


# ------------------------------------------------------------------------------------------------------------
# Pipelines


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("image-apps")
    clf = tiny_classifier()
    with torch.no_grad():
        clf.head.weight.normal_()  # distinct scores, so the order of the top-k is tested
    save_pretrained(clf, root / "vit")
    save_pretrained(tiny_igpt(size=4), root / "igpt")
    return {"vit": root / "vit", "igpt": root / "igpt", "root": root}


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


def test_text_to_image_pipeline_shapes(runs: dict[str, Path]) -> None:
    from omnigpt.hf.pipelines import pipeline

    draw = pipeline("text-to-image", str(runs["igpt"]))
    out = draw("sneaker", num_images=2, seed=0)
    assert len(out) == 2 and all(isinstance(o["image"], Image.Image) and o["image"].size == (4, 4) for o in out)
    again = draw("Sneaker", num_images=2, seed=0)
    assert np.array_equal(np.asarray(out[0]["image"]), np.asarray(again[0]["image"]))
    assert [len(x) for x in draw(["T-shirt/top", "bag"])] == [1, 1]


def test_registered_in_omnigpt_pipeline(runs: dict[str, Path]) -> None:
    from omnigpt.hf.pipelines import pipeline

    img = pipeline("text-to-image", model=str(runs["igpt"]))("Bag", seed=1)[0]["image"]
    top = pipeline("image-classification", model=str(runs["vit"]), top_k=2)(img)
    assert len(top) == 2 and top[0]["label"] in FASHION_MNIST_CLASSES


# ------------------------------------------------------------------------------------------------------------
# POST /v1/images/generations through the official client


def test_images_generations_endpoint(runs: dict[str, Path]) -> None:
    openai = pytest.importorskip("openai", reason="needs the openai client (test dependency)")
    import httpx
    from serve_helpers import make_model_dir, running_server

    from omnigpt.serve import ServeSettings, create_app, load_served_model
    from omnigpt.serve.images import ImageModels

    chat = load_served_model(make_model_dir(runs["root"]))
    images = ImageModels.load([str(runs["igpt"])], names=["igpt-tiny"])
    app = create_app([chat], ServeSettings(), offline=_no_offline(), images=images)
    with running_server(app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        res = client.images.generate(model="igpt-tiny", prompt="Ankle boot", n=2, size="256x256",
                                     response_format="b64_json")
        assert len(res.data) == 2 and res.data[0].revised_prompt == "Ankle boot"
        png = Image.open(io.BytesIO(base64.b64decode(res.data[0].b64_json)))
        assert png.format == "PNG" and png.size == (256, 256)
        native = client.images.generate(model="igpt-tiny", prompt="bag")  # defaults: 1 image, native size
        assert Image.open(io.BytesIO(base64.b64decode(native.data[0].b64_json))).size == (4, 4)
        with pytest.raises(openai.BadRequestError) as e:
            client.images.generate(model="igpt-tiny", prompt="a purple giraffe")
        assert e.value.status_code == 400 and "Sneaker" in str(e.value) and "Trouser" in str(e.value)
        for body, param in [({"prompt": "bag", "size": "300x300"}, "size"),
                            ({"prompt": "bag", "response_format": "url"}, "response_format"),
                            ({"prompt": "bag", "n": 11}, "n"), ({"n": 1}, "prompt")]:
            r = httpx.post(url + "/v1/images/generations", json={"model": "igpt-tiny", **body})
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        with pytest.raises(openai.NotFoundError):
            client.images.generate(model="nope", prompt="bag")
        assert "igpt-tiny" in [m.id for m in client.models.list().data]
    # Without an image model the route does not exist.
    with running_server(create_app([chat], ServeSettings(), offline=_no_offline())) as url:
        assert httpx.post(url + "/v1/images/generations", json={"prompt": "bag"}).status_code == 404


def _no_offline() -> Any:
    from omnigpt.serve.offline import OfflineModels

    return OfflineModels(())


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
    from omnigpt.apps.image_classify.task import ClassifierLoss

    model = tiny_mobilenet("all")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_module = ClassifierLoss(model, label_smoothing=0.1).train()
    groups = loss_module.parameter_groups()
    assert set(groups) == {"head"}
    opt = torch.optim.AdamW(groups["head"], lr=1e-2)
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 3
    for _ in range(2):
        loss = loss_module(x, y)
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
