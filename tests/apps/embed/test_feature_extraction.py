"""``pipeline("feature-extraction")``: all-MiniLM-L6-v2 by default, token features equal to transformers' own
feature-extraction pipeline on the same pinned directory (shape (1, T, 384) per text), ``pool=True`` equal to
``embed_sentences``, bad input refused."""

from __future__ import annotations

import pytest
import torch

from omnigpt import pipeline
from omnigpt.checkpoints.bert import all_minilm_l6_v2_dir
from omnigpt.checkpoints.encoders import embed_sentences

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["A man is eating food.", "naïve café, déjà vu", "你好，世界"]


@pytest.fixture(scope="module")
def fe():
    return pipeline("feature-extraction")


def test_token_features_equal_transformers_pipeline(fe) -> None:
    ref = transformers.pipeline("feature-extraction", model=str(all_minilm_l6_v2_dir()), framework="pt")
    ours, theirs = fe(TEXTS), ref(TEXTS)
    assert len(ours) == len(TEXTS)
    for a, b in zip(ours, theirs, strict=True):
        a, b = torch.tensor(a), torch.tensor(b)
        assert a.shape == b.shape and a.shape[0] == 1 and a.shape[2] == 384
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    single = fe(TEXTS[0])
    assert torch.tensor(single).shape == torch.tensor(ours[0]).shape  # one text: its (1, T, 384), not a list of it


def test_pooled_equals_embed_sentences(fe) -> None:
    pooled = torch.tensor(fe(TEXTS, pool=True))
    torch.testing.assert_close(pooled, embed_sentences(TEXTS), atol=1e-5, rtol=1e-5)
    assert torch.allclose(pooled.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)


def test_bad_input(fe) -> None:
    with pytest.raises(ValueError, match="input 1: empty text"):
        fe(["fine", " "])
    with pytest.raises(ValueError, match="input 0: expected text"):
        fe([3])
    with pytest.raises(ValueError, match="pool must be"):
        fe("x", pool="yes")
    with pytest.raises(ValueError, match="not a text encoder"):
        pipeline("feature-extraction", model="mobilenet-v2")
