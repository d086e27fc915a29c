"""The chat page's model picker, image attachments and microphone recording in headless Chromium (Playwright).

One server serves two chat models (the tiny trained chat model of serve_helpers.py and an untrained tiny multimodal
checkpoint) and whisper-tiny.en for /v1/audio/transcriptions. Chromium's fake microphone plays a real recording
(Debian's Asterisk prompt "That is not a valid conference number. Please try again.", resampled to 48 kHz 16-bit PCM
with half a second of silence either side). Checked against the API itself: the picker lists the chat models only and
routes requests to the picked one (same reply as the API for that model); an attached image goes out as an
``image_url`` data URL part and the answer shown equals the API's answer to the same request; a model that takes no
images hides the attachment and a turn the server refuses shows its 400 message; pressing record, then stop, puts
exactly what /v1/audio/transcriptions gives for the played file into the input box, and the WAV the page encoded
(16 kHz mono 16-bit, built in JS from the captured samples) is the played speech (correlation with the source);
for a model that takes audio the recording also goes out as an ``input_audio`` part.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from serve_helpers import make_model_dir, running_server
from test_serve_pretrained import make_multimodal_dir, png_data_url
from test_web import ARGS, CHROMIUM

sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (test dependency)")

from omnigpt.serve import ServeSettings, create_app, load_served_model  # noqa: E402
from omnigpt.serve.offline import OfflineModels  # noqa: E402
from omnigpt.text.processors import load_audio, resample  # noqa: E402

SPEECH = Path("/usr/share/asterisk/sounds/en_US_f_Allison/conf-invalid.wav")
CHAT, MM, WHISPER = "tiny-chat", "tiny-omni", "whisper-tiny.en"
RATE, PAD = 48_000, 0.5  # what Chromium's fake capture plays; seconds of silence before and after the speech
expect = sync_api.expect


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, float]:
    """The recording Chromium's fake microphone plays: (path, 16 kHz source samples, duration in seconds)."""
    if not SPEECH.is_file():
        pytest.skip("needs Debian asterisk-core-sounds-en-wav")
    wave8k, sr = load_audio(SPEECH)
    x = resample(wave8k, sr, RATE).numpy()
    pad = np.zeros(int(PAD * RATE), np.float32)
    x = np.concatenate([pad, x, pad])
    path = tmp_path_factory.mktemp("web-media") / "speech-48k.wav"
    sf.write(path, x, RATE, subtype="PCM_16")
    return path, resample(wave8k, sr, 16_000).numpy(), len(x) / RATE


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("web-media-models")
    try:
        served = [load_served_model(make_model_dir(root)), load_served_model(make_multimodal_dir(root))]
        settings = ServeSettings(offline_models=(WHISPER,), max_audio_seconds=60)
        with running_server(create_app(served, settings, OfflineModels((WHISPER,)))) as url:
            yield url
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def page(server: str, speech: tuple[Path, np.ndarray, float]) -> Iterator[Any]:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (scripts/system-packages.txt)")
    media = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             f"--use-file-for-fake-audio-capture={speech[0]}%noloop", "--autoplay-policy=no-user-gesture-required"]
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS + media, headless=True, timeout=60_000)
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server + "/")
            expect(page.locator("#model")).to_be_visible()
            yield page
            assert not errors, f"JavaScript errors on the page: {errors}"
        finally:
            browser.close()


def api_chat(server: str, model: str, messages: list[dict[str, Any]], max_tokens: int) -> httpx.Response:
    return httpx.post(server + "/v1/chat/completions", timeout=120, json={
        "model": model, "messages": messages, "temperature": 0, "max_tokens": max_tokens})


def send(page: Any, text: str, max_tokens: int) -> tuple[dict[str, Any], Any]:
    """Type and send ``text``; the request body the page posted, and the reply bubble once it is done."""
    page.fill("#temperature", "0")
    page.fill("#max-tokens", str(max_tokens))
    page.fill("#prompt", text)
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as req:
        page.click("#send")
    body = json.loads(req.value.post_data or "{}")
    reply = page.locator(".msg.assistant").last
    expect(page.locator("#send")).to_be_enabled()
    return body, reply


def test_picker_lists_the_chat_models_and_routes_to_the_picked_one(page: Any, server: str) -> None:
    assert page.locator("#model option").all_inner_texts() == [CHAT, MM]  # not whisper: a transcription model
    assert page.input_value("#model") == CHAT
    assert page.locator("#image-label").is_hidden() and page.locator("#record").is_visible()
    page.select_option("#model", MM)
    expect(page.locator("#image-label")).to_be_visible()
    expect(page.locator("#audio-label")).to_be_visible()
    expect(page.locator("#model-info")).to_contain_text("image, audio")
    page.click("#clear")
    body, reply = send(page, "Hello world", 8)
    assert body["model"] == MM and body["messages"] == [{"role": "user", "content": "Hello world"}]
    expected = api_chat(server, MM, body["messages"], 8).json()["choices"][0]["message"]["content"]
    expect(reply).to_have_text(expected)
    page.select_option("#model", CHAT)
    expect(page.locator("#image-label")).to_be_hidden()
    page.click("#clear")
    body, reply = send(page, "The quick", 8)
    assert body["model"] == CHAT
    expected = api_chat(server, CHAT, body["messages"], 8).json()["choices"][0]["message"]["content"]
    assert expected.strip()
    expect(reply).to_have_text(expected)


def test_attached_image_answer_equals_the_api_and_a_refused_turn_shows_the_400(page: Any, server: str) -> None:
    page.select_option("#model", MM)
    page.click("#clear")
    url = png_data_url((32, 24), seed=3)
    png = base64.b64decode(url.split(",", 1)[1])
    page.set_input_files("#image", files=[{"name": "noise.png", "mimeType": "image/png", "buffer": png}])
    body, reply = send(page, "What is in the picture?", 6)
    expect(page.locator(".msg.user").last.locator("img")).to_have_attribute("src", url)
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "text", "text": "What is in the picture?"}, {"type": "image_url", "image_url": {"url": url}}]}]
    expected = api_chat(server, MM, body["messages"], 6).json()["choices"][0]["message"]["content"]
    expect(reply).to_have_text(expected)
    assert page.input_value("#image") == ""  # the attachment went with that turn only
    # The same conversation on a text-only model: the server refuses the image in the history with a 400.
    page.select_option("#model", CHAT)
    expect(page.locator("#image-label")).to_be_hidden()
    errors_before = page.locator(".msg.error").count()
    body, _ = send(page, "And now?", 6)
    r = api_chat(server, CHAT, body["messages"], 6)
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_content"
    expect(page.locator(".msg.error")).to_have_count(errors_before + 1)
    expect(page.locator(".msg.error").last).to_have_text("Error: " + r.json()["error"]["message"])
    page.select_option("#model", MM)  # back on the multimodal model the refused turn is not in the history
    body, reply = send(page, "And now?", 6)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    expected = api_chat(server, MM, body["messages"], 6).json()["choices"][0]["message"]["content"]
    expect(reply).to_have_text(expected)


def record(page: Any, seconds: float) -> None:
    """Press record, let the fake microphone play for ``seconds`` of captured audio, press stop, await the text."""
    page.fill("#prompt", "")
    page.click("#record")
    expect(page.locator("#record")).to_have_attribute("data-state", "recording")
    page.wait_for_function(f"() => Number(document.querySelector('#record').dataset.seconds || 0) >= {seconds}",
                           timeout=30_000)
    page.click("#record")
    expect(page.locator("#record")).to_have_attribute("data-state", "idle", timeout=120_000)
    expect(page.locator("#status")).to_have_text("")  # no microphone or transcription error


def wav_samples(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        return np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768, w.getframerate()


def max_normalized_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """max over lags of <x[lag:lag+len(y)], y> / (|x window| |y|): 1 when x contains a scaled copy of y."""
    n = len(x) + len(y)
    corr = np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(y, n)), n)[: len(x) - len(y) + 1]
    energy = np.concatenate([[0.0], np.cumsum(x.astype(np.float64) ** 2)])
    windows = np.sqrt(np.maximum(energy[len(y):] - energy[: len(x) - len(y) + 1], 0)) * np.linalg.norm(y)
    return float((corr / np.maximum(windows, 1e-6 * np.linalg.norm(y) ** 2)).max())  # silent windows score ~0


def test_recording_is_transcribed_into_the_input_box(page: Any, server: str,
                                                     speech: tuple[Path, np.ndarray, float]) -> None:
    path, source, duration = speech
    expected = httpx.post(server + "/v1/audio/transcriptions", timeout=120, data={"model": WHISPER},
                          files={"file": ("speech.wav", path.read_bytes(), "audio/wav")}).json()["text"]
    assert "valid conference number" in expected, expected
    page.select_option("#model", MM)  # takes audio: the recording is attached as well
    page.click("#clear")
    with page.expect_request(lambda r: r.url.endswith("/v1/audio/transcriptions")) as req:
        record(page, duration + 0.2)
    assert req.value.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert page.input_value("#prompt") == expected
    expect(page.locator("#recording-chip")).to_be_visible()
    body, reply = send(page, page.input_value("#prompt"), 6)
    parts = body["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["text", "input_audio"] and parts[0]["text"] == expected
    assert parts[1]["input_audio"]["format"] == "wav"
    got, rate = wav_samples(base64.b64decode(parts[1]["input_audio"]["data"]))
    assert rate == 16_000 and abs(len(got) / rate - duration) < 0.5
    # The page's WAV is the played speech: each 0.25 s of the source is in it (normalized cross-correlation near 1
    # at some lag). Chunks, not the whole clip: under load the fake device can slip a 10 ms buffer mid-clip.
    chunks = [source[i : i + 4000] for i in range(0, len(source) - 4000, 4000)]
    scores = [max_normalized_correlation(got, c) for c in chunks if np.abs(c).max() > 0.02]
    assert len(scores) >= 10 and min(scores) > 0.8 and np.median(scores) > 0.98, scores
    # tiny-omni hears at most 0.64 s: the server refuses this clip and the page shows its message.
    r = api_chat(server, MM, body["messages"], 6)
    assert r.status_code == 400 and "longer than audio_seconds" in r.json()["error"]["message"]
    expect(page.locator(".msg.error").last).to_have_text("Error: " + r.json()["error"]["message"])
    expect(page.locator("#recording-chip")).to_be_hidden()


def test_short_recording_goes_to_an_audio_model_as_input_audio(page: Any, server: str) -> None:
    page.select_option("#model", MM)
    page.click("#clear")
    record(page, 0.3)  # the fake microphone's leading silence: whatever Whisper makes of it goes in the box
    expect(page.locator("#recording-chip")).to_contain_text("recording 0.")
    page.click("#drop-recording")  # ✕ drops the attachment ...
    expect(page.locator("#recording-chip")).to_be_hidden()
    body, _ = send(page, "What do you hear?", 4)
    assert body["messages"][-1]["content"] == "What do you hear?"
    record(page, 0.3)  # ... and a kept one goes with the next turn
    body, reply = send(page, "What do you hear?", 6)
    parts = body["messages"][-1]["content"]
    assert [p["type"] for p in parts] == ["text", "input_audio"]
    got, rate = wav_samples(base64.b64decode(parts[1]["input_audio"]["data"]))
    assert rate == 16_000 and 0.3 <= len(got) / rate < 0.64  # stopped in time for the 0.64 s window
    r = api_chat(server, MM, body["messages"], 6)
    assert r.status_code == 200, r.text
    expect(reply).to_have_text(r.json()["choices"][0]["message"]["content"])


def test_push_to_talk_for_a_text_model_only_fills_the_input_box(page: Any) -> None:
    page.select_option("#model", CHAT)
    page.click("#clear")
    page.fill("#prompt", "Note:")
    page.hover("#record")
    page.mouse.down()  # hold the button: recording while it is down ...
    expect(page.locator("#record")).to_have_attribute("data-state", "recording")
    page.wait_for_function("() => Number(document.querySelector('#record').dataset.seconds || 0) >= 0.8")
    page.mouse.up()  # ... letting go (after more than 0.6 s) stops it
    expect(page.locator("#record")).to_have_attribute("data-state", "idle", timeout=120_000)
    expect(page.locator("#status")).to_have_text("")
    assert page.input_value("#prompt").startswith("Note:")  # the transcript is appended to what was typed
    expect(page.locator("#recording-chip")).to_be_hidden()  # a text model: nothing to attach
    body, _ = send(page, "Hello", 4)
    assert body["model"] == CHAT and body["messages"] == [{"role": "user", "content": "Hello"}]  # no audio part
