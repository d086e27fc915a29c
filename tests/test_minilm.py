"""BERT in omnigpt's own blocks: all-MiniLM-L6-v2 sentence embeddings against ``transformers``, and the key table.

References: ``transformers.BertModel`` + ``BertTokenizerFast`` loading the same pinned directory (sentence-
transformers' recipe: mean pooling over the attention mask, L2 normalisation, 256 tokens), and the cosine facts
of all-MiniLM-L6-v2 measured with transformers: "A man is eating food." vs "A man is eating a piece of bread."
0.755, unrelated pairs ≤ 0.05.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from omnigpt.checkpoints.bert import (
    all_minilm_l6_v2_dir,
    from_hf_state_dict,
    load_all_minilm_l6_v2,
    load_bert,
    read_safetensors,
    to_hf_state_dict,
)
from omnigpt.checkpoints.encoders import embed_sentences, tokenize_batch
from omnigpt.checkpoints.hf_config import CheckpointError
from omnigpt.models.bert import BertConfig, BertModel

transformers = pytest.importorskip("transformers")

# Single-threaded: on a busy 2-core machine OpenMP spinning made these small forward passes several times slower.
pytestmark = pytest.mark.usefixtures("one_thread")

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "A cheetah chases prey on across a field.",
]
ODD_TEXTS = ["", "Héllo, WÖRLD!", "naïve café [SEP] déjà vu", "你好，世界", "emoji 😀 and \t tabs\nnewlines",
             "don't stop-believing... 3.14159 $100", "antidisestablishmentarianism " * 3, "word " * 400]


@pytest.fixture(scope="module")
def minilm():
    return load_all_minilm_l6_v2()


@pytest.fixture(scope="module")
def reference():
    d = str(all_minilm_l6_v2_dir())
    return transformers.BertModel.from_pretrained(d).eval(), transformers.BertTokenizerFast.from_pretrained(d)


def reference_embeddings(ref_model, ref_tok, texts: list[str]) -> torch.Tensor:
    """sentence-transformers' recipe, written out on transformers' BertModel."""
    batch = ref_tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = ref_model(**batch).last_hidden_state  # (B, T, 384)
    m = batch["attention_mask"].unsqueeze(-1).float()
    return F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


def test_config_from_the_directory(minilm) -> None:
    model, tok = minilm
    cfg = model.config
    assert (cfg.n_layer, cfg.n_embd, cfg.n_head, cfg.n_inner, cfg.vocab_size) == (6, 384, 12, 1536, 30522)
    assert (cfg.pooling, cfg.normalize, cfg.max_length) == ("mean", True, 256)
    assert model.num_params() == 22_713_216 == BertModel(BertConfig.from_name("all-minilm-l6-v2")).num_params()
    assert tok.truncation["max_length"] == 256 and tok.padding is None  # the file's own pad-to-128 is off


def test_tokenizer_matches_transformers(minilm, reference) -> None:
    _, tok = minilm
    _, ref_tok = reference
    texts = SENTENCES + ODD_TEXTS
    ours = tokenize_batch(tok, texts)
    ref = ref_tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(ours[key], ref[key]), key
    assert ours["input_ids"].shape[1] == 256  # "word " * 400 is truncated to 256 tokens, [SEP] kept last
    assert int(ours["input_ids"][-1, -1]) == tok.token_to_id("[SEP]") == 102


def test_embeddings_match_transformers(minilm, reference) -> None:
    model, tok = minilm
    texts = SENTENCES + ODD_TEXTS
    ref = reference_embeddings(*reference, texts)
    ours = embed_sentences(texts, model, tok, batch_size=4)  # length-sorted batches, order restored
    assert ours.shape == (len(texts), 384)
    assert (ours - ref).abs().max().item() < 1e-4
    assert torch.allclose(ours.norm(dim=-1), torch.ones(len(texts)), atol=1e-5)
    # Token-level hidden states and the pooler too, with padding in the batch.
    batch = tokenize_batch(tok, SENTENCES)
    with torch.no_grad():
        mine = model(**batch)
        theirs = reference[0](**batch)
    real = batch["attention_mask"].bool()
    assert (mine.last_hidden_state[real] - theirs.last_hidden_state[real]).abs().max().item() < 1e-4
    assert (mine.pooler_output - theirs.pooler_output).abs().max().item() < 1e-4


def test_cosine_facts(minilm) -> None:
    e = embed_sentences(SENTENCES, *minilm)
    cos = e @ e.T  # unit vectors: dot product = cosine
    assert cos[0, 1].item() == pytest.approx(0.755, abs=0.01)  # eating food / eating a piece of bread
    for j in (2, 4, 5):  # baby, violin, carts: unrelated to eating
        assert cos[0, j].item() <= 0.05
    assert cos[3, 6].item() > 0.6  # riding a horse / riding a white horse
    assert cos[7, 8].item() > 0.5  # monkey playing drums / gorilla costume playing drums
    # Batching and padding change nothing: each sentence alone gives the same vector.
    alone = torch.cat([embed_sentences(s, *minilm) for s in SENTENCES[:3]])
    assert (alone - e[:3]).abs().max().item() < 1e-5


def test_key_table_round_trips_the_file(minilm) -> None:
    model, _ = minilm
    path = all_minilm_l6_v2_dir() / "model.safetensors"
    file = read_safetensors(path)
    exported = to_hf_state_dict(model)
    assert set(file) - set(exported) == {"embeddings.position_ids"}  # the one dropped buffer
    assert all(torch.equal(exported[k], file[k]) for k in exported)
    back = from_hf_state_dict({f"bert.{k}": v for k, v in exported.items()}, model, "exported")  # prefix accepted
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_random_tiny_bert_matches_transformers_with_token_types() -> None:
    cfg = BertConfig.from_name("tiny-bert", dropout=0.0)
    ours = BertModel(cfg).eval()
    hf_cfg = transformers.BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, num_hidden_layers=cfg.n_layer,
                                     num_attention_heads=cfg.n_head, intermediate_size=cfg.n_inner,
                                     max_position_embeddings=cfg.max_position_embeddings, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    ref = transformers.BertModel(hf_cfg).eval()
    result = ref.load_state_dict(to_hf_state_dict(ours), strict=False)
    assert set(result.missing_keys) <= {"embeddings.position_ids"} and not result.unexpected_keys
    ids = torch.randint(1, cfg.vocab_size, (3, 17))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 3:] = 0
    types = torch.zeros_like(ids)
    types[:, 8:] = 1  # a second segment
    with torch.no_grad():
        a = ours(ids, mask, types)
        b = ref(input_ids=ids, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    assert (a.last_hidden_state[real] - b.last_hidden_state[real]).abs().max().item() < 1e-5
    assert (a.pooler_output - b.pooler_output).abs().max().item() < 1e-5
    # Bidirectional: changing the last real token changes the first position's state (a causal model would not).
    ids2 = ids.clone()
    ids2[0, -1] = (ids[0, -1] % (cfg.vocab_size - 1)) + 1
    with torch.no_grad():
        c = ours(ids2, mask, types)
    assert not torch.allclose(c.last_hidden_state[0, 0], a.last_hidden_state[0, 0])


# ------------------------------------------------------------------------------------------------------------
# Bad files and bad input


@pytest.fixture
def minilm_copy(tmp_path: Path) -> Path:
    """The config and tokenizer files of all-MiniLM-L6-v2 (not the weights) in a scratch directory."""
    src = all_minilm_l6_v2_dir()
    d = tmp_path / "minilm"
    d.mkdir()
    for name in ("config.json", "modules.json", "sentence_bert_config.json", "tokenizer.json"):
        shutil.copy(src / name, d / name)
    shutil.copytree(src / "1_Pooling", d / "1_Pooling")
    return d


def test_bad_weights_name_the_file_and_key(minilm, minilm_copy: Path) -> None:
    from safetensors.torch import save_file

    model, _ = minilm
    good = to_hf_state_dict(model)
    missing = {k: v for k, v in good.items() if k != "encoder.layer.3.attention.self.key.bias"}
    save_file(missing, minilm_copy / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing keys "
                                              r"\['encoder\.layer\.3\.attention\.self\.key\.bias'\]"):
        load_bert(minilm_copy)
    save_file({**good, "cls.predictions.bias": torch.zeros(30522)}, minilm_copy / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected keys \['cls\.predictions\.bias'\]"):
        load_bert(minilm_copy)
    save_file({**good, "pooler.dense.bias": torch.zeros(5)}, minilm_copy / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"key 'pooler\.bias' has shape \(5,\)"):
        load_bert(minilm_copy)
    data = (all_minilm_l6_v2_dir() / "model.safetensors").read_bytes()
    (minilm_copy / "model.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file"):
        load_bert(minilm_copy)


def test_unsupported_config_is_refused(minilm_copy: Path) -> None:
    cfg = json.loads((minilm_copy / "config.json").read_text())
    (minilm_copy / "config.json").write_text(json.dumps({**cfg, "position_embedding_type": "relative_key"}))
    with pytest.raises(CheckpointError, match=r"config\.json: position_embedding_type='relative_key'"):
        load_bert(minilm_copy)


def test_bad_input(minilm) -> None:
    model, tok = minilm
    with pytest.raises(ValueError, match=r"texts\[1\] must be a string"):
        embed_sentences(["ok", 3], model, tok)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="lone surrogate"):
        embed_sentences(["bad \ud800 text"], model, tok)
    with pytest.raises(ValueError, match="both model and tokenizer"):
        embed_sentences(["x"], model)
    assert embed_sentences([], model, tok).shape == (0, 384)
    with pytest.raises(ValueError, match="token id 30522 is out of range"):
        model(torch.tensor([[101, 30522, 102]]))
    with pytest.raises(ValueError, match="without any real token"):
        model(torch.tensor([[101, 102]]), attention_mask=torch.tensor([[0, 0]]))
    with pytest.raises(ValueError, match="exceeds max_position_embeddings 512"):
        model(torch.ones(1, 513, dtype=torch.long))


def test_from_pretrained_by_name() -> None:
    from omnigpt.checkpoints.registry import from_pretrained

    model, tokenizer, source = from_pretrained("all-minilm-l6-v2")
    assert isinstance(model, BertModel) and not model.training and source.name == "model.safetensors"
    e = embed_sentences(SENTENCES[:2], model, tokenizer)
    assert (e[0] @ e[1]).item() == pytest.approx(0.755, abs=0.01)
