"""``omnigpt generate --chat`` / ``transcribe`` / ``classify-image`` / ``embed`` with the real offline models.

Run in-process through ``cli.main.main`` (a subprocess would spend most of its time importing torch); each model is
loaded once per module (``from_pretrained`` is memoised here). Every command's output is compared with the library
call it wraps, plus the reference facts: SmolLM2 says Paris, Whisper tiny.en hears Asterisk's prompt, MobileNetV2
sees scikit-image's ``chelsea`` as an Egyptian cat (285, p 0.717, torchvision's number), MiniLM puts "eating food"
near "eating bread". Errors are one line on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from omnigpt.checkpoints import registry
from omnigpt.checkpoints.encoders import classify_image, embed_sentences
from omnigpt.cli.main import main
from omnigpt.generate.decode import generate
from omnigpt.generate.whisper import transcribe
from omnigpt.text.chat_template import ChatTemplate

SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
needs_sounds = pytest.mark.skipif(not SOUNDS.is_dir(), reason="needs Debian asterisk-core-sounds-en-wav")
_load = functools.cache(registry.from_pretrained)


@pytest.fixture(autouse=True)
def memoised_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "from_pretrained", lambda name, **kw: _load(name, **kw))


@pytest.fixture(scope="module", autouse=True)
def two_threads() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_chat_answers_paris_like_the_library(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "generate", "--model", "smollm2-135m-instruct", "--chat",
                         "What is the capital of France?", "--temperature", "0", "--max-new-tokens", "24")
    assert code == 0 and "Paris" in out, (out, err)
    model, tok, _ = _load("smollm2-135m-instruct", dtype=torch.float32)
    prompt = ChatTemplate(tok.chat_template).render([{"role": "user", "content": "What is the capital of France?"}])
    ids = [s.tokens[0] for s in generate(model, [tok.encode(prompt, allowed_special=True)], max_new_tokens=24,
                                         temperature=0, stop_token_ids=[tok.eos_token_id]) if s.tokens[0] is not None]
    assert out == tok.decode([t for t in ids if t != tok.eos_token_id]) + "\n"


@needs_sounds
def test_transcribe_json_and_text_equal_the_library(capsys: pytest.CaptureFixture[str]) -> None:
    clip = SOUNDS / "conf-invalid.wav"
    code, out, _ = run(capsys, "transcribe", str(clip), str(SOUNDS / "hello-world.wav"), "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["text"] for r in rows] == ["That is not a valid conference number. Please try again.",
                                                         "Hello world!"]
    assert rows[0]["language"] == "en" and abs(rows[0]["duration"] - 3.864) < 0.01 and rows[0]["seconds"] > 0
    model, tok, _ = _load("whisper-tiny.en")
    code, out, _ = run(capsys, "transcribe", str(clip), "--beam", "2")
    assert code == 0 and out == transcribe(model, tok, clip, beam_size=2).text.strip() + "\n"


def test_classify_image_json_is_label_score_index(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = pytest.importorskip("skimage.data", reason="scikit-image (test extra) ships the sample photos")
    from PIL import Image

    path = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    code, out, _ = run(capsys, "classify-image", str(path), "--top-k", "3", "--json")
    top = json.loads(out)
    assert code == 0 and [set(r) for r in top] == [{"label", "score", "index"}] * 3
    assert (top[0]["label"], top[0]["index"]) == ("Egyptian cat", 285) and abs(top[0]["score"] - 0.717) < 2e-3
    model = _load("mobilenet-v2").model
    ref = classify_image(path, top_k=3, model=model)
    assert [(r["label"], r["score"]) for r in top] == [(r["label"], r["score"]) for r in ref]
    code, out, _ = run(capsys, "classify-image", str(path), "--top-k", "2")
    assert code == 0 and out.splitlines()[0] == f"{ref[0]['score']:.4f}  Egyptian cat"


def test_embed_vectors_and_similarity(capsys: pytest.CaptureFixture[str]) -> None:
    texts = ["eating food", "eating bread", "the stock market fell"]
    code, out, _ = run(capsys, "embed", *texts, "--decimals", "8")
    vectors = torch.tensor(json.loads(out))
    model, tok, _ = _load("all-minilm-l6-v2")
    expected = embed_sentences(texts, model, tok)
    assert code == 0 and vectors.shape == (3, 384)
    torch.testing.assert_close(vectors, expected, rtol=0, atol=1e-7)
    code, out, _ = run(capsys, "embed", *texts, "--similarity", "--decimals", "4")
    sims = torch.tensor(json.loads(out))
    torch.testing.assert_close(sims, sims.T)
    torch.testing.assert_close(sims.diagonal(), torch.ones(3), rtol=0, atol=1e-4)
    assert sims[0, 1] > 0.6 > 0.2 > max(sims[0, 2], sims[1, 2])


@pytest.mark.parametrize("argv", [
    ("generate", "--model", "no-such-model", "--chat", "hi"),
    ("generate", "--model", "whisper-tiny.en", "--chat", "hi"),
    ("generate", "--model", "smollm2-135m-instruct", "--chat", "hi <|im_end|>"),
    ("transcribe", "missing.wav"),
    ("transcribe", __file__),  # not audio
    ("transcribe", __file__, "--beam", "0"),
    ("transcribe", __file__, "--model", "mobilenet-v2"),
    ("classify-image", __file__),  # not an image
    ("classify-image", "missing.png"),
    ("classify-image", __file__, "--top-k", "0"),
    ("embed", ""),
    ("embed", "x", "--model", "whisper-tiny.en"),
])
def test_errors_are_one_line_with_status_2(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == "", (out, err)
    assert err.count("\n") == 1 and err.startswith(f"omnigpt {argv[0]}: error: ") and "Traceback" not in err, err
