"""Fixtures shared by the application tests of more than one app folder.

* ``classify_run`` / ``seq2seq_run``: tiny classify and seq2seq models trained on small slices of the real sets
  (topic-bbc, summarize-wiki); used by tests/apps/classify and tests/apps/seq2seq (``omnigpt eval`` on both runs
  is one test). Session-scoped, so each trains once per pytest run wherever its tests are collected.
* ``runs``: a saved tiny ViT classifier and a saved tiny iGPT, for the image-classification and text-to-image
  pipeline tests of tests/apps/image_classify and tests/apps/igpt.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from app_helpers import COMMON, TINY, tiny_classifier, tiny_igpt

from omnigpt.apps import load_recipe
from omnigpt.checkpoints.pretrained import save_pretrained
from omnigpt.train.trainer import train


@pytest.fixture(scope="session")
def classify_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cls") / "run"
    r = load_recipe(None, {**COMMON, "task": "classify", "out_dir": str(out), "batch_size": 8, "max_steps": 60,
                           "eval_interval": 60, "eval_limit": 16,
                           "data": {"dataset": "topic-bbc", "limit": 8, "max_tokens": 32, "tokenizer": "bpe:600"},
                           "model": {"config": TINY}})
    result = train(r)
    return out, result


@pytest.fixture(scope="session")
def seq2seq_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("s2s") / "run"
    r = load_recipe(None, {**COMMON, "task": "seq2seq", "out_dir": str(out), "batch_size": 4, "max_steps": 80,
                           "eval_interval": 80, "eval_limit": 8,
                           "data": {"dataset": "summarize-wiki", "limit": 4, "max_source_tokens": 24,
                                    "max_target_tokens": 8, "max_new_tokens": 10, "generate": 2,
                                    "tokenizer": "bpe:600"},
                           "model": {"config": TINY}})
    result = train(r)
    return out, result


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("image-apps")
    clf = tiny_classifier()
    with torch.no_grad():
        clf.head.weight.normal_()  # distinct scores, so the order of the top-k is tested
    save_pretrained(clf, root / "vit")
    save_pretrained(tiny_igpt(size=4), root / "igpt")
    return {"vit": root / "vit", "igpt": root / "igpt", "root": root}
