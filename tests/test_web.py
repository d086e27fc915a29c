"""The chat page in a real browser: Debian's headless Chromium driven by Playwright (no browser download).

Load ``/``, see the model named in the header, send a message, and watch the assistant's reply arrive in several
streamed pieces (the page counts SSE chunks in ``data-chunks``) and finish with the same text the API gives for
the same request. Also: the Stop button cancels a long generation on the server. The model picker, image
attachments and microphone recording are in test_web_media.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from serve_helpers import make_model_dir, running_server, slowed, wait_for

sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (test dependency)")

from omnigpt.serve import ServeSettings, create_app, load_served_model  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        served = load_served_model(make_model_dir(tmp_path_factory.mktemp("web")))
        app = create_app(served, ServeSettings())
        with running_server(app) as url:
            yield url, app
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def page(server: tuple[str, Any]) -> Iterator[Any]:
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (scripts/system-packages.txt)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True, timeout=60_000)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server[0] + "/")
            yield page
            assert not errors, f"JavaScript errors on the page: {errors}"
        finally:
            browser.close()


def test_page_loads_and_names_the_model(page: Any) -> None:
    sync_api.expect(page.locator("#model-info")).to_contain_text("tiny-chat")
    assert page.title() == "omnigpt chat"
    assert page.locator("#image-label").is_hidden() and page.locator("#audio-label").is_hidden()  # text-only model
    # One chat model and no speech model: no picker, no record button (test_web_media.py has both).
    assert page.locator("#model").is_hidden() and page.locator("#record").is_hidden()
    assert page.locator("#model option").all_inner_texts() == ["tiny-chat"]


def test_sending_a_message_streams_the_reply(page: Any, server: tuple[str, Any]) -> None:
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "40")
    page.fill("#prompt", "what is the capital of France?")
    page.click("#send")
    sync_api.expect(page.locator(".msg.user").last).to_have_text("what is the capital of France?")
    reply = page.locator(".msg.assistant").last
    sync_api.expect(reply).to_have_attribute("data-done", "true")
    chunks = int(reply.get_attribute("data-chunks") or 0)
    assert chunks > 1, "the reply should arrive in several streamed pieces"
    expected = httpx.post(server[0] + "/v1/chat/completions", timeout=30, json={
        "model": "tiny-chat", "messages": [{"role": "user", "content": "what is the capital of France?"}],
        "temperature": 0, "max_tokens": 40}).json()["choices"][0]["message"]["content"]
    assert reply.text_content() == expected and expected.strip()


def test_stop_button_cancels_the_generation(page: Any, server: tuple[str, Any]) -> None:
    engine = server[1].state.engine
    before = engine.cancelled_total
    page.click("#clear")
    page.fill("#max-tokens", "480")
    page.fill("#temperature", "1")
    # Stop aborts the fetch; the server sees the disconnect and cancels. ignore_eos keeps the reply going.
    page.evaluate("""() => { const f = window.fetch; window.fetch = (url, opts) => {
        if (opts && opts.body) { const b = JSON.parse(opts.body); b.ignore_eos = true; opts.body = JSON.stringify(b); }
        return f(url, opts); }; }""")
    page.fill("#prompt", "Hello")
    with slowed(server[1].state.served.model, 0.01):  # ≥ 5 s for the whole reply: Stop comes long before
        page.click("#send")
        reply = page.locator(".msg.assistant").last
        sync_api.expect(page.locator("#stop")).to_be_visible()
        page.wait_for_function("() => Number(document.querySelector('.msg.assistant:last-child').dataset.chunks) > 2")
        page.click("#stop")
        sync_api.expect(reply).to_have_attribute("data-done", "true")
        assert wait_for(lambda: engine.cancelled_total > before and engine.running == 0, timeout=20)
    sync_api.expect(page.locator("#send")).to_be_enabled()
