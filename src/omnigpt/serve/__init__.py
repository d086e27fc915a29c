"""OpenAI-compatible HTTP API (FastAPI + uvicorn) and a chat page for omnigpt models.

``create_app(load_served_model(dir), ServeSettings(...))`` builds the app; ``omnigpt serve --model DIR`` runs it.
Modules: ``schemas`` (request/response bodies), ``errors`` (OpenAI error shape, body limit), ``prompts`` (chat
templates), ``settings`` (``ServeSettings``: the limits), ``model`` (the served model and request checks),
``engine`` (batching over ``generate()``), ``app`` (routes and streaming), ``static/index.html`` (the page); the CLI
is ``cli/serve.py``.
"""

from omnigpt.serve.app import create_app
from omnigpt.serve.model import ServedModel, load_served_model
from omnigpt.serve.settings import ServeSettings

__all__ = ["ServeSettings", "ServedModel", "create_app", "load_served_model"]
