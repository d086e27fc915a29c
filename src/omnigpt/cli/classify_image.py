"""``omnigpt classify-image FILE``: the top-k ImageNet classes of an image with ``mobilenet-v2``.

Prints "score  label" lines, best first, or with ``--json`` one JSON list of ``{"label", "score", "index"}``
(``index`` is the ImageNet class id: two classes share a name, "crane" 134 and 517). Preprocessing is the model's
own (torchvision's ImageNet evaluation transform, ``checkpoints.encoders.imagenet_transform``). Non-images, truncated
files and decompression bombs are refused in one line.
"""

from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="image file (PNG, JPEG, ...)")
    p.add_argument("--model", default="mobilenet-v2", help="mobilenet-v2 (default) or a MobileNetV2 .pth file")
    p.add_argument("--top-k", type=int, default=5, help="how many classes (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON list of {label, score, index}")


def classify(model: object, preprocessor: object, path: str, top_k: int) -> list[dict[str, object]]:
    """[{label, score, index}] of the ``top_k`` classes, best first."""
    import torch

    labels = preprocessor.labels  # type: ignore[attr-defined]
    if not 1 <= top_k <= len(labels):
        raise ValueError(f"--top-k must be in [1, {len(labels)}]")
    x = preprocessor(path)  # type: ignore[operator]  # (1, 3, 224, 224)
    with torch.inference_mode():
        probs = model(x).float().softmax(dim=-1)[0]  # type: ignore[operator]  # (num_classes,)
    scores, idx = probs.topk(top_k)
    return [{"label": labels[i], "score": s, "index": i} for s, i in zip(scores.tolist(), idx.tolist(), strict=True)]


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from omnigpt.checkpoints.encoders import mobilenet_v2_pretrained
    from omnigpt.checkpoints.registry import MODELS, from_pretrained

    if args.model in MODELS:
        model, preprocessor, _ = from_pretrained(args.model)
    elif Path(args.model).suffix == ".pth":
        model, preprocessor = mobilenet_v2_pretrained(args.model)
    else:
        raise ValueError(f"--model must be mobilenet-v2 or a MobileNetV2 .pth file, got {args.model!r}")
    if not hasattr(preprocessor, "labels"):
        raise ValueError(f"{args.model} is not an image classifier")
    if not Path(args.file).is_file():
        raise FileNotFoundError(f"{args.file}: no such file")
    top = classify(model.eval(), preprocessor, args.file, args.top_k)
    if args.json:
        print(json.dumps(top, ensure_ascii=False))
    else:
        for row in top:
            print(f"{row['score']:.4f}  {row['label']}")
    return 0
