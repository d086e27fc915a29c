"""The contrastive application (task ``contrastive``, CLIP-style): its evaluation helpers (class-balanced batches,
zero-shot accuracy, retrieval recall@k against the similarity matrix), a tiny recipe trained through ``omnigpt train``
and scored by ``omnigpt eval``, and a run killed with SIGKILL resuming bit-identical to the uninterrupted one. Uses
the real Fashion-MNIST PNGs (Debian ``dataset-fashion-mnist``) at tiny sizes. The model itself is
tests/test_multimodal.py, the multimodal application tests/apps/multimodal."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from multimodal_helpers import (
    ByteTokenizer,
    assert_bit_identical,
    checkpoint_weights,
    kill_after,
    metric_rows,
    start_training,
)

from omnigpt.apps.contrastive.task import retrieval_recall, zero_shot_accuracy
from omnigpt.checkpoints.state import latest_checkpoint
from omnigpt.cli.main import main
from omnigpt.data import multimodal as mm
from omnigpt.data.batches import class_balanced_batch, tokenize_texts
from omnigpt.models.contrastive import ContrastiveConfig, ContrastiveModel

pytestmark = pytest.mark.usefixtures("one_thread")

needs_fmnist = pytest.mark.skipif(not mm.FASHION_MNIST_DIR.is_dir(),
                                  reason="needs the Debian package dataset-fashion-mnist")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """A tiny prepared directory: 32 Fashion-MNIST images per split (the contrastive recipe reads only images)."""
    root = tmp_path_factory.mktemp("mmdata")
    mm.prepare_multimodal("fashion-mnist", root / "fmnist", limit=32)
    return root


def clip_recipe(root: Path, out: Path, **over) -> dict:
    fm = str(root / "fmnist")
    r = {"task": "contrastive", "out_dir": str(out),
         "data": {"train": [{"dir": fm}], "eval": [{"dir": fm, "split": "test"}]},
         "model": {"text": {"preset": "tiny-gpt2", "block_size": 48}, "vision": "tiny-vit", "embed_dim": 16},
         "stages": [{"name": "clip", "steps": 10, "lr": 3e-3}], "warmup": 2, "batch_size": 16, "threads": 1,
         "seed": 5, "log_interval": 1, "eval_interval": 5, "progress": False}
    r.update(over)
    return r


def write(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def clip_trained(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "clip"
    assert main(["train", str(write(run.parent / "clip.yaml", clip_recipe(data, run)))]) == 0
    return run


# ------------------------------------------------------------------------------------------------------------
# Evaluation helpers


def test_contrastive_helpers_zero_shot_and_retrieval():
    tok = ByteTokenizer()
    clip = ContrastiveModel(ContrastiveConfig.from_name("tiny-clip", text=ContrastiveConfig.from_name(
        "tiny-clip").text.replace(vocab_size=300)))
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    g = torch.Generator().manual_seed(0)
    idx = class_balanced_batch(labels, 2, 3, g)
    assert len(idx) == 6 and sorted(torch.bincount(labels[idx], minlength=3).tolist())[1:] == [3, 3]
    ids, mask = tokenize_texts(tok, ["ab", "abcd"], 3, eos_id=256)
    assert ids.tolist() == [[97, 98, 256], [97, 98, 99]] and mask.tolist() == [[1, 1, 1], [1, 1, 1]]
    px = torch.randn(6, 3, 16, 16)
    acc = zero_shot_accuracy(clip, tok, px, torch.tensor([0, 1, 0, 1, 0, 1]), ["cat", "dog"], ["a {}.", "{}!"])
    assert 0.0 <= acc["accuracy"] <= 1.0
    rec = retrieval_recall(clip, tok, px, ["a", "b", "c", "d", "e", "f"], ks=(1, 6))
    assert rec["image_to_text_r@6"] == 1.0 and rec["text_to_image_r@6"] == 1.0
    # Recall@1 is the share of rows whose own partner is the nearest: check it against the similarity matrix.
    ids, mask = tokenize_texts(tok, list("abcdef"), 32)
    sim = clip.encode_image(px) @ clip.encode_text(ids, mask).T
    rec = retrieval_recall(clip, tok, px, list("abcdef"), ks=(1,))
    assert rec["image_to_text_r@1"] == pytest.approx((sim.argmax(1) == torch.arange(6)).float().mean().item())


# ------------------------------------------------------------------------------------------------------------
# Train → eval, and exact resume after SIGKILL (a subprocess) against the uninterrupted run


@pytest.mark.e2e
@needs_fmnist
def test_contrastive_recipe_trains_and_reports_zero_shot_accuracy(clip_trained, capsys):
    rows = [r for r in metric_rows(clip_trained) if "loss" in r]
    assert len(rows) == 10 and all(math.isfinite(r["loss"]) for r in rows)
    capsys.readouterr()
    assert main(["eval", str(clip_trained)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= result["fmnist/accuracy"] <= 1.0 and result["fmnist/n"] == 32
    assert "fmnist/image_to_text_r@1" not in result  # captions repeat per class: recall@k is undefined


@pytest.mark.e2e
@needs_fmnist
def test_contrastive_run_killed_resumes_bit_identical(clip_trained, data, tmp_path, capsys):
    run = tmp_path / "clip"
    recipe = write(tmp_path / "clip.yaml", clip_recipe(data, run, checkpoint_interval=2, keep_checkpoints=20))
    ckpts = run / "checkpoints"
    kill_after(ckpts / "step_000004" / "COMPLETE", start_training(recipe))
    killed = latest_checkpoint(ckpts).name
    assert main(["train", str(recipe), "--resume"]) == 0
    assert_bit_identical(checkpoint_weights(run, 10), checkpoint_weights(clip_trained, 10),
                         f"killed after {killed}, resumed")
    assert metric_rows(run) == metric_rows(clip_trained)
