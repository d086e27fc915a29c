"""Hugging Face checkpoints both ways: tiny random GPT-2 / GPT-1 models saved by transformers in several config
variants match omnigpt to 1e-5 (fp32); transformers loads what omnigpt saves; save→load→save is bit-identical;
every file format; bad directories fail with the file and key named; the article's snippet runs."""

import json
import time

import pytest
import torch

from omnigpt.checkpoints.hf import load_gpt
from omnigpt.checkpoints.hf_config import CheckpointError, load_config
from omnigpt.checkpoints.pretrained import save_pretrained
from omnigpt.config import GPTConfig
from omnigpt.hf import (
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2Tokenizer,
    OpenAIGPTLMHeadModel,
)
from omnigpt.models.gpt import GPT, GPTForSequenceClassification, GPTModel

transformers = pytest.importorskip("transformers", reason="needs transformers (test dependency)")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

TOL = 1e-5
BASE = dict(vocab_size=101, n_positions=40, n_embd=40, n_layer=3, n_head=5, resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
GPT2_VARIANTS = {
    "default": {},
    "odd-heads-untied": dict(n_head=5, n_embd=35, tie_word_embeddings=False),
    "inverse-layer-idx": dict(scale_attn_by_inverse_layer_idx=True),
    "reorder-upcast": dict(reorder_and_upcast_attn=True),
    "positions-eps": dict(n_positions=17, layer_norm_epsilon=1e-3),
    "relu-n-inner": dict(activation_function="relu", n_inner=50),
    "exact-gelu-unscaled": dict(activation_function="gelu", scale_attn_weights=False),
    "silu": dict(activation_function="silu", n_head=1),
    "gelu-fast": dict(activation_function="gelu_fast"),
}
GPT1_VARIANTS = {"gelu": {}, "relu-eps": dict(afn="relu", layer_norm_epsilon=1e-3), "silu-untied": dict(
    afn="silu", n_head=3, n_embd=27, tie_word_embeddings=False)}


def random_hf(model_cls, config_cls, **overrides):
    torch.manual_seed(0)
    model = model_cls(config_cls(**{**BASE, "initializer_range": 0.2, **overrides})).eval()
    with torch.no_grad():  # random (not unit) LayerNorms so a mix-up of ln_1/ln_2/ln_f shows
        for name, p in model.named_parameters():
            if "ln" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


def compare(ref, ours, ids, mask=None, positions=slice(None)):
    with torch.no_grad():
        a = ref(ids, attention_mask=mask, output_hidden_states=True)
        b = ours(ids, attention_mask=mask, output_hidden_states=True)
    assert len(a.hidden_states) == len(b.hidden_states)
    for h1, h2 in zip(a.hidden_states, b.hidden_states, strict=True):
        torch.testing.assert_close(h2[:, positions], h1[:, positions], atol=TOL, rtol=0)
    if getattr(a, "logits", None) is not None:
        torch.testing.assert_close(b.logits[:, positions], a.logits[:, positions], atol=TOL, rtol=0)


def ids_for(n_positions=40, vocab=101, B=2):
    return torch.randint(0, vocab, (B, min(n_positions, 16)), generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("variant", GPT2_VARIANTS)
def test_gpt2_lm_matches_transformers_and_roundtrips(variant, tmp_path):
    overrides = GPT2_VARIANTS[variant]
    ref = random_hf(transformers.GPT2LMHeadModel, transformers.GPT2Config, **overrides)
    ref.save_pretrained(tmp_path / "hf")
    ours = load_gpt(tmp_path / "hf")
    assert isinstance(ours, GPT) and not ours.training
    assert ours.config.tie_word_embeddings == overrides.get("tie_word_embeddings", True)
    ids = ids_for(overrides.get("n_positions", 40))
    compare(ref, ours, ids)
    # save -> load -> save is bit-identical, and transformers reads omnigpt's directory with the same outputs
    save_pretrained(ours, tmp_path / "a")
    save_pretrained(load_gpt(tmp_path / "a"), tmp_path / "b")
    for f in sorted(p.name for p in (tmp_path / "a").iterdir()):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    back = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "a").eval()
    compare(back, ours, ids)


@pytest.mark.parametrize("variant", GPT1_VARIANTS)
def test_gpt1_lm_matches_transformers_both_ways(variant, tmp_path):
    ref = random_hf(transformers.OpenAIGPTLMHeadModel, transformers.OpenAIGPTConfig, **GPT1_VARIANTS[variant])
    ref.save_pretrained(tmp_path / "hf")
    ours = OpenAIGPTLMHeadModel.from_pretrained(tmp_path / "hf")
    assert ours.config.norm_position == "post" and not ours.config.final_layer_norm
    compare(ref, ours, ids_for())
    ours.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "openai-gpt"
    compare(transformers.OpenAIGPTLMHeadModel.from_pretrained(tmp_path / "ours").eval(), ours, ids_for())


def test_backbone_and_classifier_match_with_padding(tmp_path):
    ref = random_hf(transformers.GPT2ForSequenceClassification, transformers.GPT2Config, num_labels=3,
                    pad_token_id=7)
    ref.save_pretrained(tmp_path / "cls")
    ours = GPT2ForSequenceClassification.from_pretrained(tmp_path / "cls")
    assert isinstance(ours, GPTForSequenceClassification) and ours.config.num_labels == 3
    ids = ids_for()
    ids[0, -4:] = 7  # right padding in row 0
    mask = (ids != 7).long()
    compare(ref, ours, ids, mask, positions=slice(0, 12))
    labels = torch.tensor([2, 0])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, attention_mask=mask, labels=labels).loss,
                                   ref(ids, attention_mask=mask, labels=labels).loss, atol=TOL, rtol=0)
    save_pretrained(ours, tmp_path / "ours")
    back = transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path / "ours").eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, attention_mask=mask).logits, back(ids, attention_mask=mask).logits,
                                   atol=TOL, rtol=0)
    # The classifier's backbone loads as a bare GPT2Model and as an LM with the head tied to wte.
    base = GPT2Model.from_pretrained(tmp_path / "cls")
    assert isinstance(base, GPTModel)
    compare(ref.transformer, base, ids)
    lm = load_gpt(tmp_path / "cls", head="lm")
    assert lm.lm_head.weight is lm.transformer.wte.weight


def test_file_formats_bin_sharded_unprefixed_and_mask_buffers(tmp_path):
    ref = random_hf(transformers.GPT2LMHeadModel, transformers.GPT2Config)
    ids = ids_for()
    ref.save_pretrained(tmp_path / "shards", max_shard_size="20KB")
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    config = (tmp_path / "shards" / "config.json").read_text()
    for d in ("bin", "bin-shards", "old"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "config.json").write_text(config)
    # transformers 5 writes only safetensors: the .bin layouts (one file, or shards + index) are written here.
    state = ref.state_dict()  # "transformer."-prefixed keys, lm_head.weight included (tied)
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    keys = sorted(state)
    halves = {"pytorch_model-00001-of-00002.bin": keys[::2], "pytorch_model-00002-of-00002.bin": keys[1::2]}
    for name, part in halves.items():
        torch.save({k: state[k] for k in part}, tmp_path / "bin-shards" / name)
    index = {"weight_map": {k: name for name, part in halves.items() for k in part}}
    (tmp_path / "bin-shards" / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    # An old-style checkpoint: backbone keys without "transformer.", the attn.bias/masked_bias buffers, no head.
    old = {k.removeprefix("transformer."): v for k, v in state.items() if k != "lm_head.weight"}
    for i in range(ref.config.n_layer):
        old[f"h.{i}.attn.bias"] = torch.tril(torch.ones(40, 40))[None, None]
        old[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    torch.save(old, tmp_path / "old" / "pytorch_model.bin")
    for d in ("bin", "bin-shards", "shards", "old"):
        model = GPT2LMHeadModel.from_pretrained(tmp_path / d)
        assert model.lm_head.weight is model.transformer.wte.weight
        compare(ref, model, ids)


def test_omnigpt_only_options_roundtrip_and_never_load_as_gpt2(tmp_path):
    model = GPT(GPTConfig.from_name("tiny-gpt3", n_layer=2)).eval()
    save_pretrained(model, tmp_path / "g3")
    config = json.loads((tmp_path / "g3" / "config.json").read_text())
    assert config["model_type"] == "omnigpt" and config["omnigpt"]["local_window"] == 8
    assert load_config(tmp_path / "g3") == model.config
    ids = torch.randint(0, 512, (1, 20))
    with torch.no_grad():
        torch.testing.assert_close(load_gpt(tmp_path / "g3")(ids).logits, model(ids).logits, atol=0, rtol=0)
    with pytest.raises(Exception, match="omnigpt"):  # transformers refuses instead of silently dropping bands
        transformers.AutoConfig.from_pretrained(tmp_path / "g3")
    # GPT-1 with exact GELU cannot be expressed as openai-gpt, whose "gelu" is the tanh approximation;
    # the gpt1 presets use the tanh form and so save as openai-gpt.
    gpt1 = GPT(GPTConfig.from_name("tiny-gpt1", activation="gelu"))
    save_pretrained(gpt1, tmp_path / "g1")
    assert json.loads((tmp_path / "g1" / "config.json").read_text())["model_type"] == "omnigpt"
    assert load_gpt(tmp_path / "g1").config == gpt1.config
    save_pretrained(GPT(GPTConfig.from_name("tiny-gpt1")), tmp_path / "g1-tanh")
    assert json.loads((tmp_path / "g1-tanh" / "config.json").read_text())["model_type"] == "openai-gpt"


# ---------------------------------------------------------------------------------------------- errors


@pytest.fixture
def hf_dir(tmp_path):
    ref = random_hf(transformers.GPT2LMHeadModel, transformers.GPT2Config, tie_word_embeddings=False)
    ref.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def edit_config(d, **changes):
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, **changes}))


def test_unsupported_or_unknown_config_raises(hf_dir):
    edit_config(hf_dir, add_cross_attention=True)
    with pytest.raises(CheckpointError, match=r"config\.json: key 'add_cross_attention'"):
        load_gpt(hf_dir)
    edit_config(hf_dir, add_cross_attention=False, activation_function="quick_gelu")
    with pytest.raises(CheckpointError, match=r"config\.json.*activation"):
        load_gpt(hf_dir)
    edit_config(hf_dir, model_type="llama")
    with pytest.raises(CheckpointError, match=r"config\.json: key 'model_type' is 'llama'"):
        load_gpt(hf_dir)
    (hf_dir / "config.json").write_text('{"model_type": "gpt2", ')
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load_gpt(hf_dir)


class Payload:
    """Stands for an arbitrary pickled object in a malicious pytorch_model.bin."""


def test_bad_weights_name_file_and_key(hf_dir):
    from safetensors.torch import load_file, save_file

    path = hf_dir / "model.safetensors"
    good = load_file(path)

    def write(state):
        save_file(state, path, metadata={"format": "pt"})

    write({k: v for k, v in good.items() if k != "transformer.h.1.mlp.c_fc.bias"})
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing keys \['transformer\.h\.1\.mlp\.c_fc"):
        load_gpt(hf_dir)
    write({**good, "transformer.h.9.attn.c_attn.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unexpected keys \['transformer\.h\.9"):
        load_gpt(hf_dir)
    write({**good, "transformer.wpe.weight": torch.zeros(41, 40)})
    with pytest.raises(CheckpointError, match=r"model\.safetensors: key 'transformer\.wpe\.weight' has shape"):
        load_gpt(hf_dir)
    write({**good, "transformer.ln_f.bias": torch.full((40,), float("nan"))})
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'transformer\.ln_f\.bias'.*NaN"):
        load_gpt(hf_dir)
    write(good)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated download
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read"):
        load_gpt(hf_dir)
    path.unlink()
    (hf_dir / "pytorch_model.bin").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: cannot read with torch\.load"):
        load_gpt(hf_dir)
    torch.save({"transformer.wte.weight": torch.zeros(2), "payload": Payload()}, hf_dir / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin: cannot read with torch\.load\(weights_only"):
        load_gpt(hf_dir)  # arbitrary pickled objects are refused, never executed
    (hf_dir / "pytorch_model.bin").unlink()
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"wte.weight": "../x"}}))
    with pytest.raises(CheckpointError, match=r"index\.json: shard name '\.\./x'"):
        load_gpt(hf_dir)


def test_flipped_byte_in_omnigpt_checkpoint_is_caught(tmp_path):
    save_pretrained(GPT(GPTConfig.from_name("tiny-gpt2")), tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01  # a flipped bit inside a weight: safetensors itself cannot tell
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: SHA-256"):
        load_gpt(tmp_path / "m")


def test_failed_save_leaves_nothing_behind(tmp_path):
    class Broken:
        eos_token_id = 0

        def save(self, directory):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_pretrained(GPT(GPTConfig.from_name("tiny-gpt2")), tmp_path / "m", tokenizer=Broken())
    assert list(tmp_path.iterdir()) == []


def test_hub_name_without_local_directory_fails_fast_with_instructions():
    start = time.perf_counter()
    for cls in (GPT2Model, GPT2LMHeadModel):
        with pytest.raises(OSError, match=r"not a local directory.*GPT-2's weights ship in no package") as err:
            cls.from_pretrained("gpt2")
        assert "hf download gpt2" in str(err.value) and "'smollm2-135m-instruct'" in str(err.value)
        assert "\n" not in str(err.value)  # one line
    assert time.perf_counter() - start < 1.0
    assert GPT2Tokenizer.from_pretrained("gpt2").encode("Hello world") == [15496, 995]  # the BPE is offline


# ---------------------------------------------------------------------------------------------- facade


def test_article_snippet_matches_transformers(tmp_path):
    from omnigpt.text.gpt2_vocab import gpt2_tokenizer

    ref = random_hf(transformers.GPT2Model, transformers.GPT2Config, vocab_size=50257)
    ref.save_pretrained(tmp_path)
    gpt2_tokenizer().save(tmp_path)

    tokenizer = GPT2Tokenizer.from_pretrained(tmp_path)
    model = GPT2Model.from_pretrained(tmp_path)
    inputs = tokenizer("Hello, my dog is cute", return_tensors="pt")
    outputs = model(**inputs)

    hf_tok = transformers.GPT2TokenizerFast.from_pretrained(tmp_path)
    hf_inputs = hf_tok("Hello, my dog is cute", return_tensors="pt")
    assert inputs["input_ids"].tolist() == hf_inputs["input_ids"].tolist() == [[15496, 11, 616, 3290, 318, 13779]]
    assert inputs.attention_mask.tolist() == [[1] * 6]
    with torch.no_grad():
        expected = ref(**hf_inputs)
    torch.testing.assert_close(outputs.last_hidden_state, expected.last_hidden_state, atol=TOL, rtol=0)
    assert outputs.past_key_values is None and "past_key_values" not in outputs
    assert torch.equal(outputs[0], outputs.last_hidden_state) and "last_hidden_state" in repr(outputs)


def test_lm_facade_cache_labels_and_batched_tokenizer(tmp_path):
    ref = random_hf(transformers.GPT2LMHeadModel, transformers.GPT2Config)
    ref.save_pretrained(tmp_path)
    model = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert GPT2LMHeadModel.from_pretrained(tmp_path, torch_dtype=torch.float64).lm_head.weight.dtype == torch.float64
    with pytest.raises(TypeError, match="revision"):
        GPT2LMHeadModel.from_pretrained(tmp_path, revision="v2")  # would change the result: never ignored
    ids = ids_for()
    with torch.no_grad():
        full = model(ids, labels=ids)
        torch.testing.assert_close(full.loss, ref(ids, labels=ids).loss, atol=TOL, rtol=0)
        first = model(ids[:, :10], use_cache=True)  # prefill, then decode one token at a time with the cache
        past, steps = first.past_key_values, [first.logits]
        for t in range(10, ids.shape[1]):
            out = model(ids[:, t : t + 1], past_key_values=past, use_cache=True)
            steps.append(out.logits)
            past = out.past_key_values
        torch.testing.assert_close(torch.cat(steps, 1), full.logits, atol=TOL, rtol=0)
        logits, = model(ids, return_dict=False)
        assert torch.equal(logits, full.logits)

    from omnigpt.text.gpt2_vocab import gpt2_tokenizer

    tok = GPT2Tokenizer(gpt2_tokenizer())
    with pytest.raises(ValueError, match="pad_token"):
        tok(["a b c", "a"], padding=True)
    tok.pad_token = tok.eos_token
    batch = tok(["Hello world", "Hi"], padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == [[15496, 995], [17250, 50256]]
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert tok.encode("a<|endoftext|>") == [64, 50256]  # transformers parses specials in text; so does the facade
    assert tok.batch_decode(batch["input_ids"], skip_special_tokens=True) == ["Hello world", "Hi"]


def test_seed_example_runs(capsys, monkeypatch):
    import runpy
    import sys
    from pathlib import Path

    monkeypatch.setattr(sys, "argv", ["seed_gpt2.py"])
    runpy.run_path(str(Path(__file__).parents[1] / "examples" / "seed_gpt2.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "BaseModelOutputWithPast(last_hidden_state=tensor(" in out and "[[15496, 11, 616, 3290, 318, 13779]]" in out


def test_key_table_is_invertible_with_its_special_cases():
    """One table per model type, the reverse derived from it: every omnigpt key of a real model maps to a distinct
    HF key and back; both key spellings (with and without ``transformer.``) are read; mask buffers are dropped;
    exactly the four Conv1D weights per layer are transposed."""
    from omnigpt.checkpoints import hf

    for model_type, preset in (("gpt2", "tiny-gpt2"), ("openai-gpt", "tiny-gpt1")):
        model = GPT(GPTConfig.from_name(preset).replace(tie_word_embeddings=False))
        keys = list(model.state_dict())
        theirs = [hf.to_hf_key(k, model_type) for k in keys]
        assert len(set(theirs)) == len(keys)
        assert [hf.from_hf_key(k, model_type) for k in theirs] == keys
        assert [hf.from_hf_key(k.removeprefix("transformer."), model_type) for k in theirs] == keys
        assert sum(hf.is_conv1d(k) for k in keys) == 4 * model.config.n_layer
    assert hf.to_hf_key("transformer.wte.weight", "openai-gpt") == "transformer.tokens_embed.weight"
    assert hf.from_hf_key("positions_embed.weight", "openai-gpt") == "transformer.wpe.weight"
    assert hf.from_hf_key("h.11.attn.masked_bias") is None and hf.from_hf_key("transformer.h.0.attn.bias") is None
    assert hf.from_hf_key("h.0.attn.c_attn.extra") == "transformer.h.0.attn.c_attn.extra"  # unknown: kept, reported
