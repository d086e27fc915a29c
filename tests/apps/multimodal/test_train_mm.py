"""Multimodal training pieces: staged schedules, per-module learning rates, staged training through the one
``Trainer`` (frozen modules, overfitting, generation from the saved checkpoint, the time budget), and the
evaluation helpers (SpecAugment, text scores). The contrastive helpers (zero-shot, retrieval) are
tests/apps/contrastive/test_contrastive.py."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import soundfile as sf
import torch
from multimodal_helpers import ByteTokenizer

from omnigpt.apps import load_recipe
from omnigpt.apps.multimodal.task import text_scores
from omnigpt.checkpoints.pretrained import load_pretrained
from omnigpt.checkpoints.state import latest_checkpoint
from omnigpt.data.batches import collate, read_source, spec_augment, to_example
from omnigpt.generate.multimodal import generate_answers
from omnigpt.models.contrastive import ContrastiveConfig, ContrastiveModel
from omnigpt.models.multimodal import MultimodalConfig, MultimodalGPT
from omnigpt.text.processors import Processor
from omnigpt.train.recipe import MMSource
from omnigpt.train.schedule import Stage, build_optimizer, module_groups, set_lr
from omnigpt.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_omni() -> MultimodalGPT:
    proc = Processor(ByteTokenizer())
    return MultimodalGPT(MultimodalConfig.from_name("tiny-omni", image_token_id=proc.image_token_id,
                                                    audio_token_id=proc.audio_token_id))


def tone_data(root: Path) -> Path:
    """A prepared directory of two 0.5 s tones: "<|audio|> is" → "low" (200 Hz) / "high" (900 Hz)."""
    root.mkdir(parents=True, exist_ok=True)
    t = torch.arange(8000) / 16000
    convs = []
    for name, f in (("low", 200.0), ("high", 900.0)):
        sf.write(root / f"{name}.wav", (0.3 * torch.sin(2 * math.pi * f * t)).numpy(), 16000)
        convs.append({"id": name, "audio": f"{name}.wav", "conversations": [
            {"from": "human", "value": "<|audio|> is"}, {"from": "gpt", "value": name}]})
    (root / "train.llava.json").write_text(json.dumps(convs))
    return root


def tone_recipe(data: Path, out: Path, **over) -> dict:
    r = {"task": "multimodal", "out_dir": str(out), "data": {"train": [{"dir": str(data)}], "max_new_tokens": 6},
         "model": {"text": {"preset": "tiny-gpt2", "block_size": 128}, "audio": "tiny-audio", "audio_seconds": 0.64},
         "stages": [{"name": "align", "steps": 5, "lr": 1e-3, "train": ["audio_projector"]},
                    {"name": "full", "steps": 150, "lr": 3e-3, "min_lr_ratio": 1.0}],
         "warmup": 0, "batch_size": 4, "seed": 0, "threads": 1, "dtype": "float32", "log_interval": 5,
         "eval_interval": 10_000, "final_eval": False, "checkpoint_interval": 5, "keep_checkpoints": 100,
         "progress": False}
    r.update(over)
    return r


def test_stage_schedule_warmup_cosine():
    s = Stage("s", steps=110, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert s.lr_multiplier(0) == pytest.approx(1 / 11) and s.lr_multiplier(9) == pytest.approx(10 / 11)
    assert s.lr_multiplier(10) == pytest.approx(1.0)
    assert s.lr_multiplier(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s.lr_multiplier(110) == pytest.approx(0.1)
    # A recipe's stages take the recipe's values for what they leave unset.
    r = load_recipe(None, {"model": {"preset": "tiny-gpt2"}, "lr": 2e-3, "warmup": 7, "max_steps": 30,
                           "stages": [{"name": "a", "steps": 10, "lr": 1e-3}, {"name": "b", "warmup": 0}]})
    assert [(s.name, s.steps, s.lr, s.warmup) for s in r.stages] == [("a", 10, 1e-3, 7), ("b", 20, 2e-3, 0)]


def test_per_module_learning_rates_and_frozen_modules():
    model = tiny_omni()
    groups = module_groups(model)
    assert set(groups) == {"language_model", "vision_encoder", "vision_projector", "audio_encoder", "audio_projector"}
    stage = Stage("align", 10, lr=1e-3, train=("vision_projector", "audio_projector"),
                  lr_scale={"audio_projector": 0.5}, weight_decay=0.1)
    opt = build_optimizer(model, stage, (0.9, 0.99), 1e-8)
    lrs = {(g["module"], g["weight_decay"] > 0): g["lr"] for g in opt.param_groups}
    assert lrs == {("vision_projector", True): 1e-3, ("vision_projector", False): 1e-3,
                   ("audio_projector", True): 5e-4, ("audio_projector", False): 5e-4}
    assert all(p.dim() >= 2 for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"])
    assert not any(p.requires_grad for p in model.language_model.parameters())
    assert all(p.requires_grad for p in model.audio_projector.parameters())
    set_lr(opt, 0.5)  # the schedule scales every group from its own base
    assert {g["module"]: g["lr"] for g in opt.param_groups} == {"vision_projector": 5e-4, "audio_projector": 2.5e-4}
    with pytest.raises(ValueError, match="unknown module 'decoder'"):
        build_optimizer(model, Stage("x", 1, lr=1e-3, weight_decay=0.0, train=("decoder",)), (0.9, 0.99), 1e-8)
    clip = ContrastiveModel(ContrastiveConfig.from_name("tiny-clip"))
    assert {"vision_model", "text_model", "vision_projection", "text_projection", "logit_scale"} <= set(
        module_groups(clip))


@pytest.mark.e2e
def test_staged_training_trains_only_the_projector_first_then_everything_and_overfits(tmp_path):
    data = tone_data(tmp_path / "tones")
    trainer = Trainer(load_recipe(None, tone_recipe(data, tmp_path / "run")))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.fit()
    assert result.step == 155 and not result.time_limited
    assert all(p.requires_grad for p in trainer.model.parameters())  # the trainer leaves the model trainable
    # After the "align" stage (checkpoint step 5) only the audio projector has moved.
    aligned = load_pretrained(tmp_path / "run" / "checkpoints" / "step_000005").state_dict()
    moved = {k.split(".")[0] for k, v in aligned.items() if not torch.equal(v, before[k])}
    assert moved == {"audio_projector"}
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert [r["stage"] for r in rows if "loss" in r][:2] == ["align", "full"]
    assert losses[-1] < 0.1 < losses[0], losses
    # The saved model tells the two tones apart by generation.
    ckpt = latest_checkpoint(tmp_path / "run" / "checkpoints")
    model, proc = load_pretrained(ckpt), Processor.from_pretrained(ckpt)
    examples = [to_example(c, proc, with_answer=False) for c in read_source(MMSource(str(data)), False, False)]
    batch = collate(examples, proc.ids[proc.config.eos_token], left=True)
    assert generate_answers(model, proc, batch, max_new_tokens=6) == ["low", "high"]


@pytest.mark.e2e
def test_training_stops_on_its_time_budget(tmp_path):
    data = tone_data(tmp_path / "tones")
    recipe = tone_recipe(data, tmp_path / "run", stages=[{"name": "a", "steps": 10_000, "lr": 1e-3}],
                         max_minutes=0.005, checkpoint_interval=10_000)
    result = Trainer(load_recipe(None, recipe)).fit()
    assert not result.interrupted and 1 <= result.step < 10_000 and result.wall_time < 10
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == f"step_{result.step:06d}"
    assert result.time_limited, (
        "BUG (src/omnigpt/train/trainer.py): a run whose last stage ends because its time share would be overrun "
        "(_next_stage returns False) keeps _stop_now False, so TrainResult.time_limited is False, the 'time budget "
        "used up' line is not printed and the stopping step is not logged; set a time-limited flag there and "
        "report it (e.g. time_limited = step < max_steps and not interrupted).")


def test_spec_augment_and_text_scores():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 80, 50)
    y = spec_augment(x, g, gain=0.0)
    assert y.shape == x.shape and (y == x).float().mean() > 0.5 and not torch.equal(x, y)
    assert torch.equal(spec_augment(x, torch.Generator().manual_seed(0), gain=0.0), y)  # seeded
    s = text_scores(["seven", "a b"], ["Seven.", "a c"])
    assert s["wer"] == pytest.approx(1 / 3) and s["exact_match"] == 0.5
    assert text_scores(["a b c d"], ["a b c d"])["bleu_whitespace"] == pytest.approx(100.0)  # BLEU on 0-100
