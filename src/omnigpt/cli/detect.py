"""``omnigpt detect FILE``: the objects in an image, with ``pipeline("object-detection")``.

The default model is ``ssd-mobilenet-v2-coco`` (80 COCO classes); ``--model`` also takes a ``detect`` run directory.
Prints "score  label  xmin ymin xmax ymax" lines, best first, or with ``--json`` the pipeline's list of
``{"score", "label", "box": {"xmin", "ymin", "xmax", "ymax"}}`` (pixels of the image). ``--out`` saves the image with
the boxes and labels drawn on it. Non-images, truncated files and decompression bombs are refused in one line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="image file (PNG, JPEG, ...)")
    p.add_argument("--model", default=None, help="ssd-mobilenet-v2-coco (default) or a detect run directory")
    p.add_argument("--threshold", type=float, default=0.5, help="the lowest score shown (default 0.5)")
    p.add_argument("--json", action="store_true", help="one JSON list of {score, label, box}")
    p.add_argument("--out", type=Path, default=None, metavar="PNG", help="save the image with the boxes drawn")


def run(args: argparse.Namespace) -> int:
    from omnigpt.apps.common.figures import draw_boxes
    from omnigpt.hf.pipelines import pipeline
    from omnigpt.text.processors import load_image

    if not Path(args.file).is_file():
        raise FileNotFoundError(f"{args.file}: no such file")
    image = load_image(args.file)  # refuses non-images and bombs before the model loads
    found = pipeline("object-detection", model=args.model)(image, threshold=args.threshold)
    if args.json:
        print(json.dumps(found))
    else:
        for d in found:
            b = d["box"]
            print(f"{d['score']:.4f}  {d['label']}  {b['xmin']} {b['ymin']} {b['xmax']} {b['ymax']}")
    if args.out is not None:
        boxes = [(d["box"]["ymin"], d["box"]["xmin"], d["box"]["ymax"], d["box"]["xmax"]) for d in found]
        draw_boxes(image, boxes, [d["label"] for d in found], [d["score"] for d in found], scale=1).save(args.out)
    return 0
