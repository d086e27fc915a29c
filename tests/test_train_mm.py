"""Multimodal training pieces: staged schedules, per-module learning rates, the loop, and evaluation helpers."""

from __future__ import annotations

import math

import pytest
import torch
from multimodal_helpers import ByteTokenizer

from omnigpt.models.contrastive import ContrastiveConfig, ContrastiveModel
from omnigpt.models.multimodal import MultimodalConfig, MultimodalGPT
from omnigpt.text.processors import Processor, ProcessorConfig
from omnigpt.train.multimodal_lib import (
    Stage,
    build_optimizer,
    class_balanced_batch,
    fit,
    generate_answers,
    module_groups,
    retrieval_recall,
    spec_augment,
    text_scores,
    tokenize_texts,
    zero_shot_accuracy,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_audio_model() -> tuple[MultimodalGPT, Processor]:
    tok = ByteTokenizer()
    proc = Processor(tok)
    cfg = MultimodalConfig.from_name("tiny-omni", image_token_id=proc.image_token_id,
                                     audio_token_id=proc.audio_token_id)
    return MultimodalGPT(cfg), Processor(tok, ProcessorConfig(**cfg.processor_kwargs()))


def test_stage_schedule_warmup_cosine_and_time_progress():
    s = Stage("s", steps=110, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert s.lr_multiplier(0) == pytest.approx(1 / 11) and s.lr_multiplier(9) == pytest.approx(10 / 11)
    assert s.lr_multiplier(10) == pytest.approx(1.0)
    assert s.lr_multiplier(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert s.lr_multiplier(110) == pytest.approx(0.1) and s.lr_multiplier(20, progress=1.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="steps must be positive"):
        Stage("bad", steps=0)


def test_per_module_learning_rates_and_frozen_modules():
    model, _ = tiny_audio_model()
    groups = module_groups(model)
    assert set(groups) == {"language_model", "vision_encoder", "vision_projector", "audio_encoder", "audio_projector"}
    stage = Stage("align", 10, lr=1e-3, train=("vision_projector", "audio_projector"),
                  lr_scale={"audio_projector": 0.5})
    opt = build_optimizer(model, stage)
    lrs = {(g["module"], g["weight_decay"] > 0): g["lr"] for g in opt.param_groups}
    assert lrs == {("vision_projector", True): 1e-3, ("vision_projector", False): 1e-3,
                   ("audio_projector", True): 5e-4, ("audio_projector", False): 5e-4}
    assert not any(p.requires_grad for p in model.language_model.parameters())
    assert all(p.requires_grad for p in model.audio_projector.parameters())
    with pytest.raises(ValueError, match="unknown modules"):
        build_optimizer(model, Stage("x", 1, train=("decoder",)))
    clip = ContrastiveModel(ContrastiveConfig.from_name("tiny-clip"))
    assert {"vision_model", "text_model", "vision_projection", "text_projection", "logit_scale"} <= set(
        module_groups(clip))


def test_staged_fit_trains_only_the_projector_first_then_everything_and_overfits():
    model, proc = tiny_audio_model()
    t = torch.arange(8000) / 16000
    clips = [(0.3 * torch.sin(2 * math.pi * f * t), 16000) for f in (200.0, 900.0)]
    batch = proc(["<|audio|> is", "<|audio|> is"], audio=[[clips[0]], [clips[1]]], answers=["low", "high"])
    lm_before = {k: v.clone() for k, v in model.language_model.state_dict().items()}
    enc_before = {k: v.clone() for k, v in model.audio_encoder.state_dict().items()}
    proj_before = [p.clone() for p in model.audio_projector.parameters()]
    hist = fit(model, [Stage("align", 5, lr=1e-3, train=("audio_projector",))], lambda step: batch, log_every=5)
    assert all(torch.equal(v, model.language_model.state_dict()[k]) for k, v in lm_before.items())
    assert all(torch.equal(v, model.audio_encoder.state_dict()[k]) for k, v in enc_before.items())
    assert any(not torch.equal(a, b) for a, b in zip(proj_before, model.audio_projector.parameters(), strict=True))
    assert all(p.requires_grad for p in model.parameters())  # fit leaves the model trainable
    hist += fit(model, [Stage("full", 150, lr=3e-3, min_lr_ratio=1.0)], lambda step: batch, log_every=30)
    assert hist[-1]["loss"] < 0.1 < hist[0]["loss"]
    assert generate_answers(model, proc, "<|audio|> is", audio=batch["input_features"], max_new_tokens=6) == \
        ["low", "high"]


def test_fit_stops_on_its_time_budget():
    model, proc = tiny_audio_model()
    batch = proc(["hi"], answers=["there"])
    hist = fit(model, [Stage("a", 10_000, lr=1e-3)], lambda step: batch, time_limit=0.3, log_every=10**6)
    assert hist[-1]["step"] < 10_000 and hist[-1]["time"] < 5


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


def test_spec_augment_and_text_scores():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 80, 50)
    y = spec_augment(x, g, gain=0.0)
    assert y.shape == x.shape and (y == x).float().mean() > 0.5 and not torch.equal(x, y)
    s = text_scores(["seven", "a b"], ["Seven.", "a c"])
    assert s["wer"] == pytest.approx(1 / 3) and s["exact_match"] == 0.5
