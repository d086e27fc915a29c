"""The OpenAI-compatible server end to end: the official ``openai`` client against uvicorn on 127.0.0.1.

A tiny trained model (serve_helpers.py) is saved with ``save_pretrained`` and served from its directory. Invariants
checked: served greedy text equals ``generate_text`` on the same prompt (completions, and chat through the
template); streamed chunks add up to the non-streamed text and end with ``[DONE]``; stop sequences cut exactly
where the text first contains them; concurrent requests are batched and still give each client its own text;
every bad request gets a 4xx in OpenAI's error shape (never a 5xx, never FastAPI's 422); the API key, the queue
limit (429 + Retry-After) and client disconnects (generation cancelled) behave as documented.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from serve_helpers import make_model_dir, running_server, slowed, wait_for

openai = pytest.importorskip("openai", reason="needs the openai client (test dependency)")

from omnigpt.generate.text import generate_text  # noqa: E402
from omnigpt.serve import ServedModel, ServeSettings, create_app, load_served_model  # noqa: E402
from omnigpt.serve.prompts import DEFAULT_STOP, ChatTemplate, TemplateError, load_chat_template  # noqa: E402

MODEL = "tiny-chat"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 32-wide model gains nothing from threads, and the test machine has 2 cores
    try:
        yield make_model_dir(tmp_path_factory.mktemp("serve"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def served(model_dir: Path) -> ServedModel:
    return load_served_model(model_dir)


@pytest.fixture(scope="module")
def server(served: ServedModel) -> Iterator[tuple[str, Any]]:
    app = create_app(served, ServeSettings(max_batch_size=8, max_queue=16, max_body_bytes=256 * 1024,
                                           max_tokens_limit=480))
    with running_server(app) as url:
        yield url, app


@pytest.fixture(scope="module")
def client(server: tuple[str, Any]) -> Any:
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def greedy(served: ServedModel, prompt: str, n: int, stop: list[str] | None = None) -> str:
    return generate_text(served.model, served.tokenizer, prompt, max_new_tokens=n, temperature=0, stop=stop or ())


def health(url: str) -> dict[str, Any]:
    return httpx.get(url + "/health", timeout=10).json()


# ------------------------------------------------------------------------------------------------------------
# Happy paths


def test_models_list_and_retrieve(client: Any, served: ServedModel) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL] and served.name == MODEL
    assert models[0].context_length == served.block_size and models[0].modalities == ["text"]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4o")
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):  # a path, not a name: still a plain 404
        client.models.retrieve("../../etc/passwd")


def test_completion_equals_generate_text_and_counts_usage(client: Any, served: ServedModel) -> None:
    prompt = "The quick"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=6, temperature=0)
    assert r.object == "text_completion" and r.model == MODEL and r.id.startswith("cmpl-")
    assert r.choices[0].text == greedy(served, prompt, 6)
    assert r.choices[0].finish_reason == "length"
    prompt_tokens = len(served.tokenizer.encode(prompt))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
        prompt_tokens, 6, prompt_tokens + 6)
    # Ends on its own at end-of-text: finish_reason "stop", the text is the whole greedy continuation.
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=60, temperature=0)
    full = greedy(served, prompt, 60)
    assert r.choices[0].text == full
    assert r.choices[0].finish_reason == ("stop" if r.usage.completion_tokens < 60 else "length")


def test_completion_with_several_prompts_and_token_ids(client: Any, served: ServedModel) -> None:
    prompts = ["The quick", "Hello world"]
    r = client.completions.create(model=MODEL, prompt=prompts, max_tokens=5, temperature=0)
    assert [c.index for c in r.choices] == [0, 1]
    assert [c.text for c in r.choices] == [greedy(served, p, 5) for p in prompts]
    ids = served.tokenizer.encode("The quick")
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=5, temperature=0)
    assert r.choices[0].text == greedy(served, "The quick", 5)


def test_chat_uses_the_template_and_its_stop(client: Any, served: ServedModel) -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "what is the capital of France?"}]}]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40, temperature=0)
    rendered = "System: Be brief.\nUser: what is the capital of France?\nAssistant:"
    assert served.chat_template.render([{"role": m["role"], "content": "what is the capital of France?"
                                         if m["role"] == "user" else m["content"]} for m in messages]) == rendered
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == greedy(served, rendered, 40, stop=DEFAULT_STOP)
    assert r.usage.prompt_tokens == len(served.tokenizer.encode(rendered))


def test_streaming_chat_adds_up_to_the_full_answer(client: Any, server: tuple[str, Any]) -> None:
    kw: dict[str, Any] = dict(model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=30,
                              temperature=0)
    full = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == full.usage.total_tokens
    # The raw wire format: server-sent events, each "data: {json}", the last one "data: [DONE]".
    with httpx.stream("POST", server[0] + "/v1/chat/completions", json={**kw, "stream": True}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "chat.completion.chunk"


def test_streaming_completion(client: Any, served: ServedModel) -> None:
    chunks = list(client.completions.create(model=MODEL, prompt="The quick", max_tokens=8, temperature=0,
                                            stream=True))
    assert len(chunks) > 2  # text arrives in pieces, not at the end
    assert "".join(c.choices[0].text for c in chunks) == greedy(served, "The quick", 8)
    assert chunks[-1].choices[0].finish_reason is not None


@pytest.mark.parametrize("stream", [False, True])
def test_stop_sequences_cut_where_the_text_first_contains_them(client: Any, served: ServedModel,
                                                                stream: bool) -> None:
    full = greedy(served, "The quick", 40)
    assert len(full) >= 8, f"the test model should continue the corpus sentence, got {full!r}"
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    decoy = "\u2603never"  # a stop string that never appears changes nothing
    kw: dict[str, Any] = dict(model=MODEL, prompt="The quick", max_tokens=40, temperature=0, stop=[decoy, stop])
    if stream:
        chunks = list(client.completions.create(**kw, stream=True))
        text = "".join(c.choices[0].text for c in chunks)
        reason = [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason][-1]
    else:
        choice = client.completions.create(**kw).choices[0]
        text, reason = choice.text, choice.finish_reason
    assert text == full[: full.index(stop)] and reason == "stop"


def test_n_choices_and_seed_reproduce(client: Any) -> None:
    kw: dict[str, Any] = dict(model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=12,
                              temperature=1.0, n=3, seed=1234)
    a, b = client.chat.completions.create(**kw), client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]


@pytest.mark.parametrize("extreme", [{"temperature": 5e-324}, {"top_p": 5e-324}, {"top_p": 0.0},
                                     {"temperature": 2.0, "top_k": 10**12}, {"repetition_penalty": 0.01},
                                     {"seed": 2**64 - 1}, {"seed": -(2**63)}])
def test_extreme_but_valid_sampling_values_generate(server: tuple[str, Any], extreme: dict[str, Any]) -> None:
    """Found by schemathesis: top_p = 5e-324 rounds to 0 in float32 and used to empty the nucleus (a 500)."""
    r = httpx.post(server[0] + COMP, json={"model": MODEL, "prompt": "The", "max_tokens": 3, **extreme}, timeout=30)
    assert r.status_code == 200, r.text


def test_concurrent_requests_are_batched_and_each_gets_its_own_text(server: tuple[str, Any], client: Any,
                                                                    served: ServedModel) -> None:
    engine = server[1].state.engine
    prompts = ["The quick", "Hello world", "A small model", "User: what is", "The server", "Paris"] * 2
    expected = [greedy(served, p, 24) for p in prompts]
    batches_before, requests_before = engine.batches_total, engine.requests_total

    def one(p: str) -> str:
        return client.completions.create(model=MODEL, prompt=p, max_tokens=24, temperature=0).choices[0].text

    with ThreadPoolExecutor(len(prompts)) as pool:
        got = list(pool.map(one, prompts))
    assert got == expected  # left-padded batches give each row what it gets alone
    assert engine.requests_total - requests_before == len(prompts)
    assert engine.batches_total - batches_before < len(prompts), "requests that waited should share batches"


def test_page_and_health(server: tuple[str, Any]) -> None:
    r = httpx.get(server[0] + "/", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "<title>omnigpt chat</title>" in r.text and "/v1/chat/completions" in r.text
    h = health(server[0])
    assert h["status"] == "ok" and h["model"] == MODEL


# ------------------------------------------------------------------------------------------------------------
# Bad input: 4xx in OpenAI's shape, never 5xx, never 422

CHAT, COMP = "/v1/chat/completions", "/v1/completions"
USER = [{"role": "user", "content": "hi"}]
BAD: list[tuple[str, str, Any, int, str | None]] = [
    # (name, route, body (bytes = raw), status, param)
    ("json syntax", CHAT, b'{"model": "tiny-chat", "messages": [', 400, None),
    ("not an object", CHAT, b"[1, 2, 3]", 400, None),
    ("not utf-8", CHAT, b"\xff\xfe\x00{", 400, None),
    ("empty body", CHAT, b"", 400, None),
    ("lone surrogate in content", CHAT,
     b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "a\\ud800"}]}', 400, "messages[0].content"),
    ("lone surrogate in prompt", COMP, b'{"model": "tiny-chat", "prompt": "\\udfff"}', 400, "prompt"),
    ("lone surrogate in stop", COMP, b'{"model": "tiny-chat", "prompt": "x", "stop": "\\ud800"}', 400, "stop"),
    ("model is a number", CHAT, {"model": 5, "messages": USER}, 400, "model"),
    ("max_tokens is a string", CHAT, {"model": MODEL, "messages": USER, "max_tokens": "5"}, 400, "max_tokens"),
    ("max_tokens is a float", COMP, {"model": MODEL, "prompt": "x", "max_tokens": 2.5}, 400, "max_tokens"),
    ("max_tokens zero", COMP, {"model": MODEL, "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ("temperature is a string", CHAT, {"model": MODEL, "messages": USER, "temperature": "hot"}, 400, "temperature"),
    ("temperature too high", CHAT, {"model": MODEL, "messages": USER, "temperature": 9}, 400, "temperature"),
    ("stream is a string", CHAT, {"model": MODEL, "messages": USER, "stream": "yes"}, 400, "stream"),
    ("n too large", CHAT, {"model": MODEL, "messages": USER, "n": 100}, 400, "n"),
    ("messages not a list", CHAT, {"model": MODEL, "messages": "hi"}, 400, "messages"),
    ("messages empty", CHAT, {"model": MODEL, "messages": []}, 400, "messages"),
    ("unknown role", CHAT, {"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400,
     "messages[0].role"),
    ("missing messages", CHAT, {"model": MODEL}, 400, "messages"),
    ("missing model", COMP, {"prompt": "x"}, 400, "model"),
    ("too many stops", COMP, {"model": MODEL, "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("empty prompt list", COMP, {"model": MODEL, "prompt": []}, 400, "prompt"),
    ("token id out of range", COMP, {"model": MODEL, "prompt": [1, 2, 10**9]}, 400, "prompt"),
    ("unknown model", CHAT, {"model": "gpt-4o", "messages": USER}, 404, "model"),
    ("path traversal model", COMP, {"model": "../../../etc/passwd", "prompt": "x"}, 404, "model"),
    ("max_tokens over the server limit", COMP, {"model": MODEL, "prompt": "x", "max_tokens": 100_000}, 400,
     "max_tokens"),
    ("prompt + max_tokens over the context", COMP, {"model": MODEL, "prompt": "hello " * 100, "max_tokens": 480},
     400, "prompt"),
    ("prompt longer than the context", COMP, {"model": MODEL, "prompt": "héllo wörld 🙂 " * 400}, 400, "prompt"),
    ("image part on a text model", CHAT, {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}]}, 400,
     "messages[0].content[0]"),
    ("audio part on a text model", CHAT, {"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "listen"}, {"type": "input_audio", "input_audio": {"data": "UklGRg==",
                                                                                    "format": "wav"}}]}]}, 400,
     "messages[0].content[1]"),
    ("unknown part type", CHAT, {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
     400, "messages[0].content[0]"),
    ("tools", CHAT, {"model": MODEL, "messages": USER, "tools": [{"type": "function"}]}, 400, "tools"),
    ("logprobs", CHAT, {"model": MODEL, "messages": USER, "logprobs": True}, 400, "logprobs"),
    ("json mode", CHAT, {"model": MODEL, "messages": USER, "response_format": {"type": "json_object"}}, 400,
     "response_format"),
    ("echo", COMP, {"model": MODEL, "prompt": "x", "echo": True}, 400, "echo"),
]


@pytest.mark.parametrize(("route", "body", "status", "param"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_errors(server: tuple[str, Any], route: str, body: Any, status: int,
                                        param: str | None) -> None:
    if isinstance(body, bytes):
        r = httpx.post(server[0] + route, content=body, headers={"content-type": "application/json"}, timeout=30)
    else:
        r = httpx.post(server[0] + route, json=body, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param, err
    assert "Traceback" not in err["message"] and "/work" not in err["message"] and "0x" not in err["message"]


def test_body_too_large_is_413_before_parsing(server: tuple[str, Any]) -> None:
    big = b'{"model": "tiny-chat", "prompt": "' + b"a" * (300 * 1024) + b'"}'
    r = httpx.post(server[0] + COMP, content=big, headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_unknown_route_and_wrong_method(server: tuple[str, Any]) -> None:
    r = httpx.get(server[0] + "/v1/nope", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    r = httpx.get(server[0] + CHAT, timeout=10)
    assert r.status_code == 405 and "error" in r.json()


def test_the_client_raises_bad_request_not_a_retry(client: Any) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=10**6)
    assert e.value.status_code == 400 and e.value.body["param"] == "max_tokens"


# ------------------------------------------------------------------------------------------------------------
# API key, overload, disconnects


def test_api_key_gives_401_without_it(served: ServedModel) -> None:
    app = create_app(served, ServeSettings(api_key="s3cret"))
    with running_server(app) as url:
        with pytest.raises(openai.AuthenticationError) as e:
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        r = httpx.post(url + CHAT, json={"model": MODEL, "messages": USER}, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
        ok = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert ok.completions.create(model=MODEL, prompt="The", max_tokens=2).choices[0].finish_reason
        assert httpx.get(url + "/health", timeout=10).status_code == 200  # the page and health stay open
        assert httpx.get(url + "/", timeout=10).status_code == 200


LONG = {"model": MODEL, "messages": USER, "max_tokens": 450, "ignore_eos": True, "stream": True}


def test_full_queue_answers_429_with_retry_after(served: ServedModel) -> None:
    app = create_app(served, ServeSettings(max_batch_size=1, max_queue=1))
    engine = app.state.engine
    with running_server(app) as url, httpx.Client(timeout=30) as http, slowed(served.model, 0.002):
        with http.stream("POST", url + CHAT, json=LONG) as running:  # on the model
            lines = running.iter_lines()  # keep a reference: dropping the iterator closes the connection
            next(lines)
            assert wait_for(lambda: engine.running == 1)
            with http.stream("POST", url + CHAT, json=LONG) as waiting:  # in the queue (1 of 1)
                assert waiting.status_code == 200
                r = httpx.post(url + CHAT, json={**LONG, "stream": False}, timeout=30)
                assert r.status_code == 429, r.text
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["type"] == "rate_limit_error"
                with pytest.raises(openai.RateLimitError):
                    openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0).chat.completions.create(
                        model=MODEL, messages=USER, max_tokens=1)
        # Both clients left: their generations are cancelled, not run to the end.
        assert wait_for(lambda: engine.running == 0 and engine.queued == 0, timeout=20)
        assert engine.cancelled_total >= 1 and engine.rejected_total >= 2


def test_disconnect_cancels_generation(server: tuple[str, Any]) -> None:
    url, engine = server[0], server[1].state.engine
    before = engine.cancelled_total
    with slowed(server[1].state.served.model, 0.002):  # 450 tokens take ≥ 0.9 s, far longer than hanging up
        with httpx.stream("POST", url + CHAT, json=LONG, timeout=30) as r:
            lines = r.iter_lines()
            next(lines), next(lines)  # generation has started; now hang up
        assert wait_for(lambda: engine.cancelled_total == before + 1 and engine.running == 0, timeout=20)
        # Non-streaming: the client gives up waiting (a read timeout closes the connection).
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + CHAT, json={**LONG, "stream": False}, timeout=httpx.Timeout(10, read=0.3))
        assert wait_for(lambda: engine.cancelled_total == before + 2 and engine.running == 0, timeout=20)


def test_a_failure_after_the_headers_is_an_error_chunk_then_done(server: tuple[str, Any], client: Any,
                                                                   served: ServedModel) -> None:
    """A server fault mid-generation: 500 in OpenAI's shape without streaming; with streaming the 200 is already
    sent, so an ``{"error": ...}`` event and ``[DONE]`` follow (the client raises). The server keeps serving."""
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("simulated device failure at 0xdeadbeef in /secret/path")

    served.model.transformer.forward = broken  # type: ignore[method-assign]  # the backbone every decode path runs
    try:
        r = httpx.post(server[0] + COMP, json={"model": MODEL, "prompt": "The", "max_tokens": 3}, timeout=30)
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "0xdeadbeef" not in r.text and "/secret" not in r.text  # no internals leak
        with httpx.stream("POST", server[0] + CHAT, json={"model": MODEL, "messages": USER, "stream": True},
                          timeout=30) as resp:
            events = [line for line in resp.iter_lines() if line]
        assert resp.status_code == 200 and events[-1] == "data: [DONE]"
        assert json.loads(events[-2][6:])["error"]["type"] == "server_error"
        with pytest.raises(openai.APIError):
            list(client.chat.completions.create(model=MODEL, messages=USER, stream=True))
    finally:
        del served.model.transformer.forward
    assert client.completions.create(model=MODEL, prompt="The", max_tokens=2).choices[0].text is not None


# ------------------------------------------------------------------------------------------------------------
# Chat templates and the CLI


def test_chat_template_is_read_from_the_model_dir(tmp_path: Path) -> None:
    assert load_chat_template(tmp_path).stop == DEFAULT_STOP  # none saved: the default, with its stop
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages[0]['content'] }}!"}))
    assert load_chat_template(tmp_path).render([{"role": "user", "content": "hi"}]) == "hi!"
    (tmp_path / "chat_template.jinja").write_text(
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "<|user|>{{ messages[-1]['content'] }}<|assistant|>")
    tpl = load_chat_template(tmp_path)
    assert tpl.render([{"role": "user", "content": "hi"}]) == "<|user|>hi<|assistant|>" and tpl.stop == []
    with pytest.raises(TemplateError, match="no system role"):
        tpl.render([{"role": "system", "content": "x"}])
    with pytest.raises(TemplateError):  # templates run in Jinja's sandbox: no reaching into Python internals
        ChatTemplate("{{ messages.__class__.__mro__[1].__subclasses__() }}").render([])


def test_cli_serve_runs_the_model_directory(model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """``omnigpt serve`` parses its flags, loads the directory and hands uvicorn the app on 127.0.0.1 (in-process:
    a subprocess would spend most of its time importing torch)."""
    import uvicorn

    from omnigpt.cli.main import main

    captured: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: captured.update(app=app, **kw))
    assert main(["serve", "--model", str(model_dir), "--api-key", "k", "--max-queue", "3"]) == 0
    assert captured["host"] == "127.0.0.1" and captured["port"] == 8000
    assert captured["app"].state.settings.max_queue == 3
    with running_server(captured["app"]) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
        assert c.models.list().data[0].id == MODEL
        assert c.completions.create(model=MODEL, prompt="The quick", max_tokens=3, temperature=0).usage
    assert main(["serve", "--model", str(model_dir / "nope")]) == 2
    assert "model directory not found" in capsys.readouterr().err
