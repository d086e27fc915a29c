"""Schemathesis against the server's own OpenAPI schema: generated requests never get a 5xx, and every response
matches what the schema documents (status codes, content types, bodies, including the 400/404 error shapes).

Bounded for a 2-core machine: a few examples per operation, no shrinking marathons, short generations (the
schema allows ``max_tokens`` up to the server limit, so the server under test caps it at 16).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from serve_helpers import make_model_dir, running_server

schemathesis = pytest.importorskip("schemathesis", reason="needs schemathesis (test dependency)")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from omnigpt.serve import ServeSettings, create_app, load_served_model  # noqa: E402


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        served = load_served_model(make_model_dir(tmp_path_factory.mktemp("schema")))
        app = create_app(served, ServeSettings(max_tokens_limit=16, default_max_tokens=8, max_queue=64))
        with running_server(app) as url:
            yield url
    finally:
        torch.set_num_threads(threads)


def _schema_document() -> dict:
    """The app's OpenAPI document, built at collection time (it does not depend on the weights, so a random tiny
    model stands in; the test below checks the live server publishes the same document). Schemathesis' lazy
    ``from_fixture`` loader does not work with pytest 9, hence the eager ``from_dict``."""
    from omnigpt import GPT, GPTConfig
    from omnigpt.serve import ServedModel

    served = ServedModel("tiny-chat", GPT(GPTConfig.from_name("tiny-gpt2")).eval(), tokenizer=None)
    return create_app(served, ServeSettings()).openapi()


SCHEMA_DOC = _schema_document()
schema = schemathesis.openapi.from_dict(SCHEMA_DOC)


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_matches_its_schema_and_never_fails_with_5xx(case: Any, api_url: str) -> None:
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        case.body["model"] = "tiny-chat"  # otherwise nearly every generated request stops at the 404 for the model
    case.call_and_validate(base_url=api_url, timeout=30,
                           checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance])


def test_schema_documents_400_not_422(api_url: str) -> None:
    import httpx

    doc = httpx.get(api_url + "/openapi.json", timeout=10).json()
    assert doc == SCHEMA_DOC
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            assert "422" not in op["responses"], (method, path)
            if method == "post":
                assert {"400", "401", "404", "413", "429"} <= set(op["responses"]), (method, path)
