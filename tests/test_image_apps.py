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
    from omnigpt.data.multimodal import load_fashion_mnist
    from omnigpt.train.tasks.image_classify import to_pixels

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
    from omnigpt.train.tasks import load_recipe, task_class
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
    from omnigpt.train.recipe import RecipeError
    from omnigpt.train.tasks import load_recipe

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
    from omnigpt.train.tasks.igpt import frechet_distance, independent_pixels_bpd

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
    from omnigpt.train.tasks import load_recipe, task_class
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
    from omnigpt.hf.vision_pipelines import image_classification

    clf = image_classification(str(runs["vit"]), top_k=3)
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
    from omnigpt.hf.vision_pipelines import image_classification, text_to_image

    clf = image_classification(str(runs["vit"]))
    bad = runs["root"] / "notes.png"
    bad.write_text("this is not an image")
    with pytest.raises(ValueError, match="notes.png"):
        clf(bad)
    with pytest.raises(ValueError, match="shape"):
        clf(np.zeros((2, 3, 4, 5), np.uint8))
    with pytest.raises(ValueError, match="not an image classifier"):
        image_classification(str(runs["igpt"]))
    draw = text_to_image(str(runs["igpt"]))
    with pytest.raises(ValueError, match="Ankle boot"):  # the message lists the valid classes
        draw("a purple giraffe")
    with pytest.raises(ValueError, match="not an image generator"):
        text_to_image(str(runs["vit"]))


def test_text_to_image_pipeline_shapes(runs: dict[str, Path]) -> None:
    from omnigpt.hf.vision_pipelines import text_to_image

    draw = text_to_image(str(runs["igpt"]))
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
