"""Mixed load on the server (benchmarks/serve_mixed.py): every endpoint at once, hang-ups, malformed and oversized
uploads — no 5xx, every 4xx in OpenAI's error shape, the engines drained and ``/health`` 200 after.

The default test runs a short burst against the app in a thread (uvicorn on 127.0.0.1, the script's small models:
a tiny chat GPT, a tiny multimodal checkpoint for image turns, a tiny iGPT run, Whisper tiny.en and
all-MiniLM-L6-v2). The slow test runs the script itself: ``omnigpt serve`` in a subprocess for 60 s with its RSS
sampled, then schemathesis against the server's own ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from serve_helpers import running_server

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_mixed.py"


def _script() -> Any:
    spec = importlib.util.spec_from_file_location("serve_mixed", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_mixed"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


M = _script()


def test_error_shape_check_catches_what_is_not_openais() -> None:
    ok = b'{"error": {"message": "m", "type": "invalid_request_error", "param": null, "code": "c"}}'
    assert M.error_shape_problem(400, ok) is None
    for bad in (b'{"detail": [{"loc": ["body"]}]}', b"Internal Server Error", b'{"error": "m"}',
                b'{"error": {"message": "m", "type": "t"}}', b'{"error": {"message": "", "type": "t", "param": null, '
                                                           b'"code": null}}'):
        assert M.error_shape_problem(400, bad) is not None, bad


def test_short_mixed_burst_no_5xx_openai_errors_health_after(tmp_path: Path) -> None:
    from omnigpt.serve import ServeSettings, create_app, load_served_model
    from omnigpt.serve.images import ImageModels
    from omnigpt.serve.offline import OfflineModels

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        models = M.build_models(tmp_path)
        served = [load_served_model(models[M.CHAT]), load_served_model(models[M.MM])]
        images = ImageModels.load([str(models[M.IMAGE])], names=[M.IMAGE])
        offline = (M.WHISPER, M.MINILM)
        settings = ServeSettings(max_body_bytes=M.MAX_BODY, max_audio_seconds=M.MAX_AUDIO_SECONDS,
                                 default_max_tokens=32, max_tokens_limit=512, max_queue=64, offline_models=offline)
        app = create_app(served, settings, OfflineModels(offline), images)
        with running_server(app) as url:
            stats = asyncio.run(M.mixed_load(url, 4.0))
            health = M.drained_health(url)
            assert httpx.get(url + "/health", timeout=10).status_code == 200
    finally:
        torch.set_num_threads(threads)
    print(M.report(stats, 4.0))
    assert M.check(stats, health) == []
    kinds = stats.by_kind
    assert set(kinds) == set(M.make_kinds(M._client)), "every kind of request was sent"
    assert kinds["chat_hang_up"]["disconnected"] >= 1 and health["cancelled_total"] >= 1  # hang-ups cancel rows
    for name in ("chat_stream", "asr_valid", "embed_valid", "image_gen", "image_chat"):
        assert kinds[name][200] >= 1, (name, kinds[name])
    for name in ("asr_malformed", "image_chat_bad", "chat_bad", "embed_bad", "image_gen_bad"):
        assert kinds[name][400] >= 1, (name, kinds[name])
    for name in ("asr_oversized", "image_gen_oversized", "image_chat_oversized"):
        assert set(kinds[name]) == {413}, (name, kinds[name])  # the 413 itself, never a connection reset
    assert not any(isinstance(s, int) and s >= 500 for s in stats.by_status)


@pytest.mark.slow
def test_full_mixed_load_and_schemathesis() -> None:
    """The script as documented: 60 s of mixed load on ``omnigpt serve`` (RSS bounded), then schemathesis."""
    pytest.importorskip("schemathesis", reason="needs schemathesis (test dependency)")
    out = subprocess.run([sys.executable, str(SCRIPT), "--seconds", "60", "--schemathesis", "20"],
                         capture_output=True, text=True, timeout=900)
    print(out.stdout[-6000:], out.stderr[-3000:])
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-3000:]
    assert "0 failures" in out.stdout and "OK: no 5xx" in out.stdout
