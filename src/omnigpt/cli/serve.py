"""``omnigpt serve --model DIR|NAME``: the OpenAI-compatible API and the chat page on uvicorn (127.0.0.1 by default).

``--model`` takes a checkpoint directory, a ``.gguf`` file or an offline name (``smollm2-135m-instruct``) and may be
repeated to serve several chat models (the first is the page's default). Speech recognition (``whisper-tiny.en``,
``whisper-base``) and embeddings (``all-minilm-l6-v2``) are served beside them and load on first use
(``--offline-models none`` turns them off). ``--image-model RUN`` adds an iGPT run at ``/v1/images/generations``.
"""

from __future__ import annotations

import argparse
import os

DEFAULT_OFFLINE_MODELS = ("whisper-tiny.en", "whisper-base", "all-minilm-l6-v2")  # = serve.offline's (no import)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, action="append",
                   help="checkpoint directory, .gguf file or offline name (smollm2-135m-instruct); repeatable")
    p.add_argument("--name", action="append", default=None,
                   help="model id clients send, one per --model in order (default: the directory's or name's)")
    p.add_argument("--offline-models", default=",".join(DEFAULT_OFFLINE_MODELS),
                   help="comma-separated speech/embedding models for /v1/audio/transcriptions and /v1/embeddings, "
                        "loaded on first use (default: %(default)s; 'none' for none)")
    p.add_argument("--image-model", action="append", default=[],
                   help="an igpt run directory to serve at /v1/images/generations (its id: the directory's name); "
                        "repeatable")
    p.add_argument("--max-audio-seconds", type=float, default=600.0, help="longer audio uploads get a 400")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("OMNIGPT_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $OMNIGPT_API_KEY, else none)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights' dtype (auto: bf16 on a GPU with native bf16, else fp32)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--max-batch-size", type=int, default=8, help="sequences stepped together on the model")
    p.add_argument("--max-queue", type=int, default=32, help="waiting requests before new ones get 429")
    p.add_argument("--batch-window-ms", type=float, default=50.0,
                   help="after a batch ends, wait up to this long for the next batch to fill (0: never wait)")
    p.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024, help="larger request bodies get 413")
    p.add_argument("--default-max-tokens", type=int, default=256, help="completion length when a request sets none")
    p.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens accepted")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from omnigpt.serve import ServeSettings, create_app, load_served_model
    from omnigpt.serve.offline import OfflineModels

    for name in ("max_batch_size", "max_queue", "max_body_bytes", "default_max_tokens", "max_tokens_limit"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= args.batch_window_ms <= 1000:
        raise ValueError("--batch-window-ms must be in [0, 1000]")
    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ValueError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    names = args.name or []
    if len(names) > len(args.model):
        raise ValueError(f"{len(names)} --name values for {len(args.model)} --model values")
    offline = tuple(n.strip() for n in args.offline_models.split(",") if n.strip() and n.strip() != "none")
    if not args.max_audio_seconds > 0:
        raise ValueError("--max-audio-seconds must be > 0")
    served = [load_served_model(m, name=names[i] if i < len(names) else None, device=args.device, dtype=args.dtype)
              for i, m in enumerate(args.model)]
    settings = ServeSettings(api_key=args.api_key or None, max_batch_size=args.max_batch_size,
                             max_queue=args.max_queue, batch_window_ms=args.batch_window_ms,
                             max_body_bytes=args.max_body_bytes,
                             default_max_tokens=args.default_max_tokens, max_tokens_limit=args.max_tokens_limit,
                             offline_models=offline, max_audio_seconds=args.max_audio_seconds)
    images = None
    if args.image_model:
        from omnigpt.serve.images import ImageModels

        images = ImageModels.load(args.image_model, device=args.device)
    app = create_app(served, settings, OfflineModels(offline, device=args.device), images)
    print(f"omnigpt serve: {', '.join(m.name for m in served)}"
          f"{' + ' + ', '.join(offline) + ' (on first use)' if offline else ''} on http://{args.host}:{args.port}/ "
          f"(API at /v1, {'API key required' if settings.api_key else 'no API key'})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=5)
    return 0
