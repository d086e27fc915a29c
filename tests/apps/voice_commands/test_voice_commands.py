"""Voice commands (keyword spotting): the vocabulary and its real test clips, synthetic-only training data, the
model, the audio-classify task end to end, the audio-classification pipeline and its bad inputs.

Needs the Debian packages asterisk-core-sounds-en(-wav), espeak-ng and flite (scripts/bootstrap.sh installs them;
a skip names the missing one and is a failure under CI=true). Synthetic clips go to pytest's tmp_path (piper off:
the flow is the same, and espeak-ng/flite clips take milliseconds)."""

import dataclasses
import hashlib
import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from omnigpt.apps.voice_commands import data as kw
from omnigpt.data import speech_sources
from omnigpt.models.audio import AudioConfig
from omnigpt.models.audio_classifier import AudioClassifier, AudioClassifierConfig
from omnigpt.text.processors import ProcessorError

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not speech_sources.ASTERISK_SOUNDS.exists(), reason="needs Debian package "
                       "asterisk-core-sounds-en-wav"),
    pytest.mark.skipif(not speech_sources.ASTERISK_TRANSCRIPTS.exists(), reason="needs Debian package "
                       "asterisk-core-sounds-en"),
    pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (Debian package espeak-ng)"),
    pytest.mark.skipif(shutil.which("flite") is None, reason="needs flite (Debian package flite)"),
]

NO_PIPER = kw.SynthSettings(piper=0.0, flite=0.5)
WORDS = ("zero", "one", "two")


def tiny_config(labels=WORDS, seconds=1.2, **kw_):
    return AudioClassifierConfig(name="test", audio=AudioConfig.from_name("tiny-audio"), labels=labels,
                                 seconds=seconds, **kw_)


def test_commands_vocabulary_and_its_real_clips():
    words = kw.vocabulary("commands")
    assert len(words) == 49 and len(set(words)) == 49
    clips = kw.real_clips(words)
    counts = {w: sum(c["label"] == w for c in clips) for w in words}
    assert len(clips) == 53
    assert {w: n for w, n in counts.items() if n != 1} == {"star": 2, "goodbye": 2, "extension": 3}
    assert all(kw.under_asterisk(c["audio"]) for c in clips)
    assert {c["id"] for c in clips if c["label"] == "seven"} == {"asterisk/digits/7"}
    assert kw.spoken_form("z") == "zee" and kw.spoken_form("b") == "B" and kw.spoken_form("pause") == "pause"
    with pytest.raises(ValueError, match="xyzzy"):
        kw.real_clips(("zero", "xyzzy"))
    with pytest.raises(ValueError, match="unknown vocabulary"):
        kw.vocabulary("nope")


def test_training_clips_are_synthetic_seeded_and_disjoint_from_the_test_set(tmp_path):
    train = kw.synthetic_clips(WORDS, 2, seed=0, settings=NO_PIPER, root=tmp_path / "a")
    val = kw.synthetic_clips(WORDS, 1, seed=1, settings=NO_PIPER, root=tmp_path / "a")
    assert [c["label"] for c in train] == ["zero", "zero", "one", "one", "two", "two"]
    assert all(c["engine"] in ("espeak-ng", "flite") for c in train + val)
    test = kw.real_clips(WORDS)
    assert not any(kw.under_asterisk(c["audio"]) for c in train + val)  # training never reads a recording
    digest = [hashlib.sha256(Path(c["audio"]).read_bytes()).hexdigest() for c in train + val + test]
    assert len(set(digest)) == len(digest)  # no clip is shared between the splits
    # Same settings and seed, fresh cache → identical clips; the cached copy is reused (same paths).
    again = kw.synthetic_clips(WORDS, 2, seed=0, settings=NO_PIPER, root=tmp_path / "b")
    assert [Path(c["audio"]).read_bytes() for c in again] == [Path(c["audio"]).read_bytes() for c in train]
    assert kw.synthetic_clips(WORDS, 2, seed=0, settings=NO_PIPER, root=tmp_path / "a") == train
    assert not list((tmp_path / "a").glob("*.tmp-*"))


def test_the_task_trains_only_on_synthetic_clips(tmp_path, monkeypatch):
    from omnigpt.apps import load_recipe, task_class

    monkeypatch.setenv("OMNIGPT_CACHE", str(tmp_path))
    r = load_recipe("configs/tasks/voice-commands.yaml",
                    ["--data.words=[zero,one,two]", "--data.per_word=2", "--data.val_per_word=1", "--data.piper=0",
                     "--model.preset=tiny-audio", "--data.seconds=1.2", f"--out_dir={tmp_path / 'run'}"])
    task = task_class(r.task)(r)
    assert task.train_w.shape == (6, 9600) and task.val_x.shape == (3, 80, 120)
    synth = list((tmp_path / "keywords").glob("synth-*/clips.jsonl"))
    rows = [json.loads(line) for f in synth for line in f.read_text().splitlines()]
    assert len(rows) == 9 and not any(kw.under_asterisk(Path(f.parent, r_["audio"])) for f in synth for r_ in rows)
    b = task.batch(0, 0, 4)
    assert b["input_features"].shape == (4, 80, 120) and b["labels"].tolist() == task.train_y[
        torch.tensor(task.order.rows(0, 0, 4, r.batch_size))].tolist()
    assert torch.equal(task.batch(3, 0, 4)["input_features"], task.batch(3, 0, 4)["input_features"])  # seeded
    loss = task.train_module()(**b)
    assert abs(loss.item() - np.log(3)) < 1e-4  # zero-initialised head: uniform first prediction


def test_recipes_parse_and_bad_recipes_name_the_problem():
    from omnigpt.apps import load_recipe
    from omnigpt.train.recipe import RecipeError

    scratch = load_recipe("configs/tasks/voice-commands.yaml")
    whisper = load_recipe("configs/tasks/voice-commands-whisper.yaml")
    assert (scratch.max_steps, whisper.max_steps) == (507, 6000)  # step-defined: the README rows' steps
    assert whisper.model.encoder == "whisper-tiny.en" and whisper.stages[0].train == ("head",)
    with pytest.raises(RecipeError, match="xyzzy"):
        load_recipe("configs/tasks/voice-commands.yaml", ["--data.words=[zero,xyzzy]"])
    with pytest.raises(RecipeError, match="model.encoder"):
        load_recipe("configs/tasks/voice-commands.yaml", ["--model.encoder=wav2vec"])
    with pytest.raises(RecipeError, match="n_ctx"):  # 3 s = 150 tokens > tiny-audio's 64 positions
        load_recipe("configs/tasks/voice-commands.yaml", ["--model.preset=tiny-audio", "--data.seconds=3"])
    with pytest.raises(RecipeError, match="tempo"):
        load_recipe("configs/tasks/voice-commands.yaml", ["--data.tempo=[1.2,0.8]"])


def test_tiny_model_overfits_a_few_clips(tmp_path):
    clips = kw.synthetic_clips(WORDS, 2, seed=0, settings=NO_PIPER, root=tmp_path)
    cfg = tiny_config()
    w, n = kw.read_clips([c["audio"] for c in clips], cfg.sample_rate, cfg.seconds)
    x = kw.clip_features(w, n, cfg.sample_rate, cfg.cmn)  # (6, 80, 120)
    y = torch.tensor([WORDS.index(c["label"]) for c in clips])
    model = AudioClassifier(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(200):
        loss = model(x, labels=y).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(first - np.log(3)) < 1e-4
    model.eval()
    with torch.no_grad():
        out = model(x, labels=y)
    assert out.loss.item() < 0.05 and torch.equal(out.logits.argmax(-1), y)


def test_frozen_encoder_gets_no_gradient_and_config_round_trips():
    cfg = tiny_config(head_hidden=16)
    model = AudioClassifier(cfg)
    model.encoder.requires_grad_(False)
    x = torch.randn(2, 80, 120)
    out = model(x, labels=torch.tensor([0, 1]))
    assert not out.features.requires_grad  # the encoder ran without autograd
    out.loss.backward()
    assert model.head[0].weight.grad is not None
    assert AudioClassifierConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="distinct labels"):
        tiny_config(labels=("a", "a"))
    with pytest.raises(ValueError, match="encoder"):
        tiny_config(encoder="wav2vec")


def test_whisper_variant_uses_the_pretrained_encoder():
    """The classifier's encoder is Whisper tiny.en's own: same features as the Whisper model's encoder."""
    from omnigpt.checkpoints.registry import from_pretrained

    whisper = from_pretrained("whisper-tiny.en").model
    cfg = AudioClassifierConfig(name="w", audio=whisper.config.audio_config(), labels=WORDS, encoder="whisper",
                                cmn=False, head_hidden=8, pretrained="whisper-tiny.en")
    model = AudioClassifier(cfg).eval()
    model.encoder.load_state_dict(whisper.encoder.state_dict())
    w, n = kw.read_clips([kw.real_clips(("seven",))[0]["audio"]], cfg.sample_rate, cfg.seconds)
    x = kw.clip_features(w, n, cfg.sample_rate, cfg.cmn)  # (1, 80, 150) in Whisper's scaling
    with torch.no_grad():
        want = whisper.encode(x).mean(1)
        got = model(x).features
    torch.testing.assert_close(got, want)


def test_feature_cache_equals_the_live_path_and_is_reused(tmp_path, monkeypatch):
    """data.feature_cache_copies: the cached pooled vector of (clip, copy) is what the model computes live on that
    clip's copy; copy 0 is the clean clip, the other copies are augmented and batch-independent; the head trains on
    cached rows; the file is keyed by the encoder's weights, written atomically and read back on the next run."""
    from safetensors import safe_open

    from omnigpt.apps import load_recipe, task_class
    from omnigpt.apps.voice_commands.task import weights_digest
    from omnigpt.train.recipe import RecipeError

    monkeypatch.setenv("OMNIGPT_CACHE", str(tmp_path))
    r = load_recipe("configs/tasks/voice-commands-whisper.yaml",
                    ["--data.words=[zero,one,two]", "--data.per_word=2", "--data.val_per_word=1", "--data.piper=0",
                     "--data.feature_cache_copies=3", "--data.feature_dropout=0.0", f"--out_dir={tmp_path / 'run'}"])
    task = task_class(r.task)(r)
    assert task.cache.shape == (3, 6, 384) and task.val_features.shape == (3, 384)
    model = task.model.eval()
    with torch.no_grad():
        for copy in range(3):
            for i in (0, 5):
                live = model(task.copy_features([i], copy)).features[0]  # the live path, one clip at a time
                torch.testing.assert_close(task.cache[copy, i], live, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(task.val_features, model(task.val_x).features, atol=2e-5, rtol=1e-4)
    clean = kw.clip_features(task.train_w[:2], task.train_len[:2], 8000, cmn=False)
    assert torch.equal(task.copy_features([0, 1], 0), clean)  # copy 0 = what evaluation and the pipeline compute
    assert torch.equal(task.copy_features([4], 2)[0], task.copy_features([1, 4], 2)[1])  # batch-independent
    assert (task.cache[1] - task.cache[0]).abs().amax() > 1e-2 and (task.cache[2] - task.cache[1]).abs().amax() > 1e-2
    b = task.batch(0, 0, 4)
    rows = torch.tensor(task.order.rows(0, 0, 4, r.batch_size))
    assert set(b) == {"features", "labels"} and b["labels"].tolist() == task.train_y[rows].tolist()
    assert all(any(torch.equal(f, task.cache[c, i]) for c in range(3))
               for f, i in zip(b["features"], rows, strict=True))
    assert abs(task.train_module()(**b).item() - np.log(3)) < 1e-4  # the model's own zero-initialised head
    files = list((tmp_path / "keywords").glob("features-*"))
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no temporary file left beside it
    with safe_open(str(files[0]), framework="pt") as f:
        assert json.loads(f.metadata()["spec"])["encoder_sha256"] == weights_digest(task.model.encoder)
    info = json.loads((tmp_path / "run" / "feature_cache.json").read_text())
    assert info["computed_now"] and info["built"]["encoder_forwards"] == 3 * 6 + 3
    r2 = dataclasses.replace(r, data=dataclasses.replace(r.data, feature_dropout=0.5))  # not part of the key
    again = task_class(r2.task)(r2)
    assert not json.loads((tmp_path / "run" / "feature_cache.json").read_text())["computed_now"]
    assert torch.equal(again.cache, task.cache)
    dropped = again.batch(0, 0, 4)["features"]  # the same rows, half the entries zeroed, the rest doubled
    assert torch.equal(dropped != 0, dropped == 2 * b["features"]) and 0.3 < (dropped == 0).float().mean() < 0.7
    stored = weights_digest(task.model.encoder)
    with torch.no_grad():
        task.model.encoder.conv1.weight[0, 0, 0] += 1  # other weights → another key
    assert weights_digest(task.model.encoder) != stored
    with pytest.raises(RecipeError, match="frozen encoder"):  # the scratch recipe trains its encoder
        load_recipe("configs/tasks/voice-commands.yaml", ["--data.feature_cache_copies=2"])


def _wav(path: Path, samples: np.ndarray, rate: int = 8000) -> Path:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture
def saved_model(tmp_path):
    from omnigpt.checkpoints.pretrained import save_pretrained

    model = AudioClassifier(tiny_config(labels=("zero", "one", "two", "three")))
    torch.nn.init.normal_(model.head[-1].weight, std=1.0)  # distinct scores, so the ranking is visible
    return save_pretrained(model, tmp_path / "model")


def test_pipeline_output_shape_and_top_k(saved_model):
    from omnigpt import pipeline

    clf = pipeline("audio-classification", model=saved_model, top_k=3)
    seven = kw.real_clips(("seven",))[0]["audio"]
    one = clf(seven)
    assert [set(d) for d in one] == [{"label", "score"}] * 3
    assert [d["score"] for d in one] == sorted((d["score"] for d in one), reverse=True)
    full = clf(seven, top_k=99)  # capped at the number of labels
    assert len(full) == 4 and abs(sum(d["score"] for d in full) - 1) < 1e-5
    assert {d["label"] for d in full} == {"zero", "one", "two", "three"}
    wave_16k = np.sin(np.linspace(0, 2000, 16000)).astype(np.float32) * 0.5
    batch = clf([seven, wave_16k, {"raw": wave_16k[::2], "sampling_rate": 8000}], top_k=1)
    assert len(batch) == 3 and all(isinstance(b, list) and len(b) == 1 for b in batch)
    assert batch[0][0] == one[0]
    # the same tone at 16 kHz and at 8 kHz gives the same window after resampling
    assert batch[1][0]["label"] == batch[2][0]["label"]


def test_pipeline_bad_inputs_name_the_input(saved_model, tmp_path):
    from omnigpt import pipeline

    clf = pipeline("audio-classification", model=saved_model)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    silent = _wav(tmp_path / "silent.wav", np.zeros(8000))
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n")
    for bad, why in ((empty, "empty.wav"), (silent, "silent.wav.*silent"), (text, "notes.wav"),
                     (tmp_path / "missing.wav", "missing.wav.*not found")):
        with pytest.raises(ProcessorError, match=why):
            clf(bad)
    with pytest.raises(ProcessorError, match="input 1 .*silent"):
        clf([_wav(tmp_path / "ok.wav", np.random.default_rng(0).normal(0, 0.1, 8000)), np.zeros(4000)])
    with pytest.raises(ProcessorError, match="1-D"):
        clf(np.zeros((2, 100)))
    with pytest.raises(ProcessorError, match="sampling_rate"):
        clf({"raw": np.ones(100)})
    with pytest.raises(ValueError, match="top_k"):
        clf(str(silent), top_k=0)
    with pytest.raises(ValueError, match="unknown task"):
        pipeline("audio-classifcation", model=saved_model)
    with pytest.raises(ValueError, match="needs model="):
        pipeline("audio-classification")


@pytest.mark.e2e
def test_train_and_eval_end_to_end(tmp_path, monkeypatch):
    """omnigpt train + omnigpt eval on a 3-word vocabulary: eval.json has accuracy on the real clips, the same-run
    baselines and the failures; the confusion PNG is written; the pipeline loads the run."""
    from omnigpt import pipeline
    from omnigpt.cli.main import main

    monkeypatch.setenv("OMNIGPT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(["train", "configs/tasks/voice-commands.yaml", "--data.words=[zero,one,two]", "--data.per_word=2",
                 "--data.val_per_word=1", "--data.piper=0", "--model.preset=tiny-audio", "--data.seconds=1.2",
                 "--max_steps=6", "--warmup=1", "--eval_interval=3", f"--out_dir={run}", "--progress=false"]) == 0
    assert main(["eval", str(run)]) == 0
    res = json.loads((run / "eval.json").read_text())
    assert res["task"] == "audio-classify" and res["n"] == 3 and res["labels"] == list(WORDS)
    assert 0 <= res["accuracy"] <= 1 and len(res["failures"]) == round(3 * (1 - res["accuracy"]))
    assert set(res["baselines"]) == {"majority_class", "logmel_logreg", "mfcc_logreg", "whisper_vocabulary"}
    # Pretrained Whisper held to the three words ("0", "One." ... all count) hears every real recording right.
    assert res["baselines"]["whisper_vocabulary"]["accuracy"] == 1.0
    assert res["baselines"]["majority_class"]["accuracy"] == pytest.approx(1 / 3, abs=1e-3)
    assert sum(map(sum, res["confusion_matrix"])) == 3
    assert (run / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(pipeline("audio-classification", model=run)(kw.real_clips(("one",))[0]["audio"])) == 3
