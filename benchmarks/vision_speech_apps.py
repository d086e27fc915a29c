"""The vision and speech applications of issue 14, trained and evaluated end to end: one row per model, with the
baselines ``omnigpt eval`` measures in the same call, wall times on this machine and the command of every step.

    python benchmarks/vision_speech_apps.py                  # every row (about 1.5 hours on a 2-core CPU)
    python benchmarks/vision_speech_apps.py --only voice     # rows whose name contains "voice"
    python benchmarks/vision_speech_apps.py --smoke          # 2 steps and 8 eval items per row: checks the wiring

Each row runs ``omnigpt train RECIPE --out_dir=runs/media/NAME --seed=S [overrides]`` then ``omnigpt eval
runs/media/NAME``, exactly as printed (``benchmarks/apps.py``). The table goes to ``runs/media/results.md``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from apps import Row, main  # noqa: E402

ROWS: list[Row] = [
    ("fmnist-vit", "configs/tasks/fmnist-vit.yaml", [], [1337], "ViT from scratch, Fashion-MNIST"),
    ("mobilenet-clipart", "configs/tasks/mobilenet-clipart.yaml", [], [1337], "MobileNetV2, frozen backbone"),
    ("mobilenet-clipart-partial", "configs/tasks/mobilenet-clipart-partial.yaml", [], [1337],
     "MobileNetV2, last blocks fine-tuned"),
    ("mobilenet-clipart-scratch", "configs/tasks/mobilenet-clipart-scratch.yaml", [], [1337],
     "MobileNetV2 from scratch"),
    ("detect-scenes", "configs/tasks/detect-scenes.yaml", [], [1337], "Pix2Seq: ViT + GPT decoder"),
    ("igpt-fmnist", "configs/tasks/igpt-fmnist.yaml", ["--data.classifier=runs/media/fmnist-vit"], [1337],
     "iGPT, class-conditional"),
    ("asr-whisper-finetune", "configs/tasks/asr-whisper-finetune.yaml", [], [1337],
     "Whisper tiny.en fine-tuned on synthetic speech"),
    ("asr-whisper-scratch", "configs/tasks/asr-whisper-finetune.yaml",
     ["--model.init_from=scratch", "--model.preset=whisper-tiny-test", "--model.freeze_encoder=false", "--lr=1.0e-3",
      "--max_steps=5000", "--checkpoint_interval=500"], [1337], "Whisper-shaped model from scratch, same data"),
    ("voice-commands", "configs/tasks/voice-commands.yaml", [], [1337], "audio classifier from scratch"),
    ("voice-commands-whisper", "configs/tasks/voice-commands-whisper.yaml", [], [1337],
     "frozen Whisper encoder + head"),
    ("llava-smollm2", "configs/tasks/llava-smollm2.yaml", [], [1337], "MobileNetV2 + SmolLM2-135M-Instruct"),
    ("llava-scratch", "configs/tasks/llava-scratch.yaml", [], [1337], "MultimodalGPT from scratch, same budget"),
]
EVAL_ARGS: dict[str, list[str]] = {}

if __name__ == "__main__":
    raise SystemExit(main(ROWS, EVAL_ARGS, __doc__.split("\n\n")[0], "runs/media"))
