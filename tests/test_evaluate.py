"""Evaluation: a full pass (every val token predicted once), perplexity, bits per byte; omnigpt and HF checkpoints."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from omnigpt import GPT, GPTConfig
from omnigpt.apps import load_recipe
from omnigpt.cli.main import main
from omnigpt.data import DataSpec, TokenData, eval_windows, prepare_data
from omnigpt.train.evaluate import evaluate, evaluate_texts
from omnigpt.train.trainer import train

WORDS = ["to", "be", "or", "not", "that", "is", "the", "question", "whether", "tis", "nobler", "in", "mind", "suffer"]


@pytest.fixture
def data(tmp_path):
    rng = random.Random(1)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(10):
        (corpus / f"d{i}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(120)) + ".\n")
    spec = DataSpec(dir=str(tmp_path / "data"), sources=[str(corpus / "*.txt")], tokenizer="char", val_fraction=0.3)
    return TokenData(prepare_data(spec, progress=False))


def test_full_pass_matches_a_direct_computation(data):
    model = GPT(GPTConfig.from_name("tiny-gpt2", vocab_size=data.vocab_size, block_size=24)).eval()
    result = evaluate(model, data, "val", batch_size=3, dtype=None)
    nats, n = 0.0, 0
    with torch.no_grad():
        for w in eval_windows(data.shards("val"), 24):
            w = torch.from_numpy(w.astype(np.int64))
            logits = model(w[None, :-1]).logits[0]
            nats += F.cross_entropy(logits, w[1:], reduction="sum").item()
            n += len(w) - 1
    assert result.tokens == n == data.count("val") - len(data.shards("val"))  # every token but the first
    assert result.loss == pytest.approx(nats / n, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    tokens_per_byte = data.count("val") / data.count("val", "bytes")
    assert result.bits_per_byte == pytest.approx(result.loss / math.log(2) * tokens_per_byte)
    # Random init: close to the uniform distribution's ln V.
    assert abs(result.loss - math.log(data.vocab_size)) < 0.5
    # Periodic validation takes a fixed subset of the same windows, spread over the split: the first and the last.
    part = evaluate(model, data, "val", batch_size=3, max_tokens=48, dtype=None)
    wins = eval_windows(data.shards("val"), 24)
    assert part.windows == 2 and part.tokens == len(wins[0]) - 1 + len(wins[-1]) - 1
    # Raw texts through the model's tokenizer: same machinery, one stream.
    tok = data.tokenizer()
    texts = ["to be or not to be", "that is the question"]
    raw = evaluate_texts(model, tok, texts, dtype=None)
    assert raw.tokens == sum(len(tok.encode(t)) + 1 for t in texts) - 1


def test_eval_command_on_a_trained_run(data, tmp_path, capsys):
    recipe = load_recipe(None, {
        "out_dir": str(tmp_path / "run"), "data": {"dir": str(data.dir)},
        "model": {"preset": "tiny-gpt2", "block_size": 32}, "threads": 1, "batch_size": 8, "micro_batch": 8,
        "max_steps": 8, "warmup": 2, "eval_interval": 4, "checkpoint_interval": 4, "progress": False})
    result = train(recipe)
    capsys.readouterr()
    # A run directory resolves to its newest checkpoint, and the recipe's data directory is found from it.
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["checkpoint"].endswith("step_000008")
    assert out["loss"] == pytest.approx(result.eval["val_loss"], rel=1e-6)  # the trainer's final pass, same numbers
    assert out["tokens"] == data.count("val") - 1
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_eval_imported_hugging_face_checkpoint(data, tmp_path, capsys):
    transformers = pytest.importorskip("transformers", reason="needs transformers (test extra) for the HF model")
    cfg = transformers.GPT2Config(vocab_size=data.vocab_size, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    torch.manual_seed(0)
    hf_model = transformers.GPT2LMHeadModel(cfg).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    assert main(["eval", str(tmp_path / "hf"), "--data", str(data.dir), "--dtype", "float32", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    nats, n = 0.0, 0
    with torch.no_grad():  # transformers computes the loss itself (labels shifted inside, as in omnigpt)
        for w in eval_windows(data.shards("val"), 32):
            ids = torch.from_numpy(w.astype(np.int64))[None]
            last = hf_model(input_ids=ids[:, :-1]).logits[0, -1]  # the last target w[-1]
            nats += F.cross_entropy(last[None], ids[0, -1:]).item()
            if ids.shape[1] > 2:  # a 2-token tail window has no other target (HF's mean over none is NaN)
                loss = hf_model(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss  # predicts w[1:-1]
                nats += loss.item() * (ids.shape[1] - 2)
            n += ids.shape[1] - 1
    assert out["tokens"] == n
    assert out["loss"] == pytest.approx(nats / n, rel=1e-5)
