"""Push-to-talk on the chat page, in headless Chromium (Playwright) with a real recording as the microphone.

Chromium's fake audio capture plays Debian's Asterisk prompt ``conf-getpin`` (Allison: "Please enter the conference
pin number.", 8 kHz) resampled to 48 kHz 16-bit PCM with half a second of silence either side. Holding the record button
for the length of the clip and letting go (off the button: the page captures the pointer) must put the prompt's
human transcript into the message box (normalised words equal), the page's upload must be a 16 kHz mono 16-bit WAV
of the right length in OpenAI's multipart shape, and the text must stay editable: what the user changed is what is
sent. Error paths, each checked against what really happens rather than a mock: a server that refuses the upload
(``max_audio_seconds`` below the recording) shows exactly the 400 message the API gives for the page's own request;
a server without a speech model hides the button; a browser that denies the microphone, and a plain-http page on a
non-local host (where browsers offer no ``getUserMedia``), each say so in the status line, in red, and leave the box
as it was. The page-level recording details (the WAV's samples, input_audio attachments) are in test_web_media.py.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from serve_helpers import make_model_dir, running_server
from test_web import ARGS, CHROMIUM
from test_web_media import wav_samples

sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (test dependency)")

from omnigpt.data.formats import AssetMissing  # noqa: E402
from omnigpt.data.speech_sources import asterisk_prompts, normalize_transcript  # noqa: E402
from omnigpt.serve import ServeSettings, create_app, load_served_model  # noqa: E402
from omnigpt.serve.media import FormFile, parse_form  # noqa: E402
from omnigpt.serve.offline import OfflineModels  # noqa: E402
from omnigpt.text.processors import load_audio, resample  # noqa: E402

# Whisper tiny.en gets this prompt right through resampling, 16-bit rounding, gain, noise and dropped 10 ms buffers
# (30 of 30 such variants; "tt-weasels" came out as "foam system" under noise, so it would make a flaky test).
PROMPT = "asterisk/conf-getpin"
WHISPER = "whisper-tiny.en"
RATE, PAD = 48_000, 0.5  # the fake capture file's rate; seconds of silence before and after the speech
STRICT_SECONDS = 1.0  # the refusing server's max_audio_seconds
INSECURE_HOST = "voice.test"  # resolved to 127.0.0.1 by Chromium only: a non-local, non-secure origin
expect = sync_api.expect


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, float]:
    """The file Chromium's fake microphone plays: (path, normalised human transcript, duration in seconds)."""
    try:
        record = next(r for r in asterisk_prompts([""]) if r["id"] == PROMPT)
    except AssetMissing as e:
        pytest.skip(f"needs Debian asterisk-core-sounds-en-wav and asterisk-core-sounds-en: {e}")
    wave8k, sr = load_audio(record["audio"])
    pad = np.zeros(int(PAD * RATE), np.float32)
    x = np.concatenate([pad, resample(wave8k, sr, RATE).numpy(), pad])
    path = tmp_path_factory.mktemp("web-voice") / "speech-48k.wav"
    sf.write(path, x, RATE, subtype="PCM_16")  # Chromium's fake capture reads 16-bit PCM WAV
    return path, record["text"], len(x) / RATE


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Three servers on one tiny chat model: ``voice`` (whisper), ``strict`` (whisper, uploads over 1 s refused)
    and ``mute`` (no speech model). The two with whisper share one loaded copy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model_dir = make_model_dir(tmp_path_factory.mktemp("web-voice-model"))
    offline = OfflineModels((WHISPER,))
    settings = {"voice": ServeSettings(offline_models=(WHISPER,), max_audio_seconds=60),
                "strict": ServeSettings(offline_models=(WHISPER,), max_audio_seconds=STRICT_SECONDS),
                "mute": ServeSettings(offline_models=())}
    try:
        with contextlib.ExitStack() as stack:
            urls = {}
            for name, s in settings.items():
                app = create_app(load_served_model(model_dir), s, offline if s.offline_models else OfflineModels(()))
                urls[name] = stack.enter_context(running_server(app))
            yield urls
    finally:
        torch.set_num_threads(threads)


def launch(pw: Any, extra: list[str]) -> Any:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (scripts/system-packages.txt)")
    return pw.chromium.launch(executable_path=CHROMIUM, args=ARGS + extra, headless=True, timeout=60_000)


@contextlib.contextmanager
def open_page(browser: Any, url: str) -> Iterator[Any]:
    """A fresh page at ``url``, its model list loaded; fails the test on any JavaScript error."""
    page = browser.new_page()
    page.add_init_script(KEEP_UPLOADS)
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url)
    expect(page.locator("#model-info")).to_contain_text("tiny-chat")
    try:
        yield page
    finally:
        page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Any, speech: tuple[Path, str, float]) -> Iterator[Any]:
    """Chromium with the microphone allowed and the recording as its input."""
    media = ["--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
             f"--use-file-for-fake-audio-capture={speech[0]}%noloop",
             f"--host-resolver-rules=MAP {INSECURE_HOST} 127.0.0.1"]
    b = launch(playwright, media)
    try:
        yield b
    finally:
        b.close()


# Playwright sees no body for a fetch whose FormData holds a Blob; this keeps a copy of each multipart upload as the
# browser encodes it (new Response(form) serialises a FormData exactly as fetch sends it, boundary aside).
KEEP_UPLOADS = """(() => { const fetch0 = window.fetch; window.uploads = [];
  window.fetch = async (url, opts) => {
    if (opts && opts.body instanceof FormData) {
      const r = new Response(opts.body), bytes = new Uint8Array(await r.arrayBuffer());
      let s = ""; for (const b of bytes) s += String.fromCharCode(b);
      window.uploads.push({ url: String(url), type: r.headers.get("content-type"), body: btoa(s) });
    }
    return fetch0(url, opts);
  }; })();"""


def last_upload(page: Any) -> tuple[str, bytes]:
    """(content-type, body) of the page's last multipart POST."""
    up = page.evaluate("() => window.uploads[window.uploads.length - 1]")
    assert up["url"].endswith("/v1/audio/transcriptions")
    return up["type"], base64.b64decode(up["body"])


def parse_upload(content_type: str, body: bytes) -> tuple[dict[str, Any], bytes]:
    """The multipart form the page posted to /v1/audio/transcriptions: (other fields, the file's bytes)."""
    fields = parse_form(body, content_type)
    file = fields.pop("file")
    assert isinstance(file, FormFile) and file.filename == "recording.wav"
    return fields, file.data


def expect_status_error(page: Any, text: str) -> None:
    expect(page.locator("#status")).to_have_text(text)
    expect(page.locator("#status")).to_have_class("error")
    expect(page.locator("#record")).to_have_attribute("data-state", "idle")
    expect(page.locator("#record")).to_be_enabled()


def test_push_to_talk_puts_the_transcript_in_the_box(browser: Any, servers: dict[str, str],
                                                     speech: tuple[Path, str, float]) -> None:
    _, transcript, duration = speech
    assert transcript == "please enter the conference pin number"
    with open_page(browser, servers["voice"] + "/") as page:
        button = page.locator("#record")
        expect(button).to_be_visible()
        expect(button).to_have_attribute("data-state", "idle")
        button.hover()
        with page.expect_request(lambda r: r.url.endswith("/v1/audio/transcriptions")) as req:
            page.mouse.down()  # hold to talk ...
            expect(button).to_have_attribute("data-state", "recording")
            expect(button).to_have_text("■ Stop")
            page.wait_for_function(f"() => Number(document.querySelector('#record').dataset.seconds) >= {duration}",
                                   timeout=30_000)
            expect(page.locator("#status")).to_contain_text("recording… ")  # the running length is shown
            page.locator("#messages").hover()  # ... drift off the button and let go there: still ends the take
            page.mouse.up()
        expect(button).to_have_attribute("data-state", "idle", timeout=60_000)
        expect(page.locator("#status")).to_have_text("")
        heard = page.input_value("#prompt")
        assert normalize_transcript(heard) == transcript, heard
        if os.environ.get("OMNIGPT_WEB_SCREENSHOT"):  # docs/apps/chat-push-to-talk.png is made this way
            page.set_viewport_size({"width": 1100, "height": 300})
            page.screenshot(path=os.environ["OMNIGPT_WEB_SCREENSHOT"])
        assert req.value.headers["content-type"].startswith("multipart/form-data; boundary=")
        fields, wav = parse_upload(*last_upload(page))
        assert fields == {"model": WHISPER, "response_format": "json"}
        samples, rate = wav_samples(wav)
        assert rate == 16_000 and duration - 0.1 <= len(samples) / rate <= duration + 1.0
        # The text is the user's to edit before it goes: what is sent is the edited box, as one plain user turn.
        page.locator("#prompt").press("End")
        page.locator("#prompt").type(" again")
        page.fill("#max-tokens", "4")
        with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as chat:
            page.click("#send")
        assert chat.value.post_data_json["messages"] == [{"role": "user", "content": heard + " again"}]
        expect(page.locator(".msg.user")).to_have_text(heard + " again")
        expect(page.locator(".msg.assistant").last).to_have_attribute("data-done", "true")


def test_a_refused_upload_shows_the_servers_message(browser: Any, servers: dict[str, str]) -> None:
    with open_page(browser, servers["strict"] + "/") as page:
        page.fill("#prompt", "typed before")
        page.click("#record")  # click to start ...
        page.wait_for_function(
            f"() => Number(document.querySelector('#record').dataset.seconds) >= {STRICT_SECONDS + 0.5}")
        page.click("#record")  # ... and again to stop
        # The same request straight to the API: the message the page shows is the server's own 400.
        expect(page.locator("#record")).to_have_attribute("data-state", "idle")
        content_type, body = last_upload(page)
        r = httpx.post(servers["strict"] + "/v1/audio/transcriptions", content=body,
                       headers={"content-type": content_type}, timeout=60)
        assert r.status_code == 400 and "longer than" in r.json()["error"]["message"], r.text
        expect_status_error(page, "Transcription: " + r.json()["error"]["message"])
        assert page.input_value("#prompt") == "typed before"


def test_no_speech_model_no_button(browser: Any, servers: dict[str, str]) -> None:
    cards = httpx.get(servers["mute"] + "/v1/models").json()["data"]
    assert [c["id"] for c in cards] == ["tiny-chat"]
    with open_page(browser, servers["mute"] + "/") as page:
        expect(page.locator("#send")).to_be_visible()
        expect(page.locator("#record")).to_be_hidden()


def test_a_plain_http_page_says_why_it_cannot_record(browser: Any, servers: dict[str, str]) -> None:
    url = servers["voice"].replace("127.0.0.1", INSECURE_HOST) + "/"
    with open_page(browser, url) as page:
        assert page.evaluate("() => [window.isSecureContext, navigator.mediaDevices === undefined]") == [False, True]
        page.fill("#prompt", "typed before")
        page.click("#record")
        expect_status_error(page, "Microphone: this browser records only on https:// or http://localhost pages")
        assert page.input_value("#prompt") == "typed before"


def test_a_denied_microphone_is_shown(playwright: Any, servers: dict[str, str]) -> None:
    if True:
        b = launch(playwright, ["--use-fake-device-for-media-stream", "--deny-permission-prompts"])
        try:
            with open_page(b, servers["voice"] + "/") as page:
                uploads: list[str] = []
                page.on("request", lambda r: uploads.append(r.url) if "/v1/audio/" in r.url else None)
                page.fill("#prompt", "typed before")
                page.click("#record")
                expect_status_error(page, "Microphone: permission denied; allow the microphone for this page "
                                          "(the icon in the address bar) and try again")
                assert page.input_value("#prompt") == "typed before" and uploads == []
        finally:
            b.close()
