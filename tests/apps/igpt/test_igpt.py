"""The igpt application (task ``igpt``): the palette, bits per dimension by hand, seeded class-conditioned sampling,
the baselines' formulas, save/load, the task through the one Trainer, the ``text-to-image`` pipeline and
``POST /v1/images/generations``. Fashion-MNIST comes from Debian ``dataset-fashion-mnist``; the saved tiny models of
the pipeline tests are ``runs`` (tests/apps/conftest.py), shared with tests/apps/image_classify."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from app_helpers import needs_fmnist, tiny_igpt
from PIL import Image

from omnigpt.checkpoints.pretrained import load_pretrained, save_pretrained
from omnigpt.models.igpt import IGPT, dequantize, fit_palette, quantize


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


@pytest.mark.e2e
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
# The pipeline


def test_text_to_image_pipeline_shapes(runs: dict[str, Path]) -> None:
    from omnigpt.hf.pipelines import pipeline

    draw = pipeline("text-to-image", str(runs["igpt"]))
    out = draw("sneaker", num_images=2, seed=0)
    assert len(out) == 2 and all(isinstance(o["image"], Image.Image) and o["image"].size == (4, 4) for o in out)
    again = draw("Sneaker", num_images=2, seed=0)
    assert np.array_equal(np.asarray(out[0]["image"]), np.asarray(again[0]["image"]))
    assert [len(x) for x in draw(["T-shirt/top", "bag"])] == [1, 1]


# ------------------------------------------------------------------------------------------------------------
# POST /v1/images/generations through the official client


@pytest.mark.e2e
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
