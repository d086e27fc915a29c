"""Generation: filters vs brute force, cached decode == full forward, greedy == transformers (GPT-1/2, batched and
left-padded), determinism and seeds, per-sequence stops, stop strings with partial UTF-8, context overflow, CLI."""

import os
import threading

import pytest
import torch

from omnigpt import GPT, GPTConfig, make_kv_cache
from omnigpt.generate.decode import (
    ContextOverflowError,
    apply_repetition_penalty,
    apply_temperature,
    generate,
    sample_next,
    top_k_filter,
    top_p_filter,
)
from omnigpt.generate.text import TextStream, generate_text, stream_text

TINY = ["tiny-gpt1", "tiny-gpt2", "tiny-gpt3"]
PROMPTS = [[5, 17, 300, 42, 9, 1, 77], [12, 400], [8, 8, 100, 3]]  # different lengths → left padding


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(name: str, std: float = 0.3, **kw) -> GPT:
    """A tiny model with large random weights, so greedy tokens vary from step to step."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(name, initializer_range=std, wpe_initializer_range=std, **kw)).eval()
    return model


def tokens(gen) -> list[list[int]]:
    """Collect a Generation's tokens per sequence."""
    out: list[list[int]] = []
    for step in gen:
        out = out or [[] for _ in step.tokens]
        for row, t in zip(out, step.tokens, strict=True):
            if t is not None:
                row.append(t)
    return out


@torch.no_grad()
def naive_greedy(model: GPT, prompt: list[int], n: int, keep: int | None = None) -> list[int]:
    """Greedy decoding by re-running the full forward every step (no cache); ``keep`` mimics the slide policy."""
    ctx, out = list(prompt), []
    block = model.config.block_size
    if keep is not None and len(ctx) > block:
        ctx = ctx[-keep:]
    for _ in range(n):
        t = int(model(torch.tensor([ctx])).logits[0, -1].argmax())
        out.append(t)
        if keep is not None and len(ctx) == block:
            ctx = ctx[-keep:]
        ctx.append(t)
    return out


# ---------------------------------------------------------------------------------------------- filters


def test_top_k_matches_brute_force():
    logits = torch.randn(6, 50)
    for k in (1, 3, 10, 49):
        got = top_k_filter(logits, k)
        for row, g in zip(logits, got, strict=True):
            kth = sorted(row.tolist(), reverse=True)[k - 1]
            assert [bool(torch.isfinite(x)) for x in g] == [x >= kth for x in row.tolist()]
    assert torch.equal(top_k_filter(logits, None), logits) and torch.equal(top_k_filter(logits, 0), logits)


def test_top_p_matches_brute_force():
    logits = torch.randn(8, 40) * 2
    for p in (0.05, 0.3, 0.7, 0.95, 0.999):
        got = top_p_filter(logits, p)
        for row, g in zip(logits, got, strict=True):
            probs = torch.softmax(row.double(), -1).tolist()
            keep, total = set(), 0.0
            for i in sorted(range(len(probs)), key=lambda i: -probs[i]):  # most probable first, until mass >= p
                keep.add(i)
                total += probs[i]
                if total >= p:
                    break
            assert {i for i in range(len(g)) if torch.isfinite(g[i])} == keep
            assert torch.equal(g[list(keep)], row[list(keep)])


def test_repetition_penalty_and_temperature_match_brute_force():
    logits = torch.randn(3, 20)
    seen = torch.rand(3, 20) > 0.5
    got = apply_repetition_penalty(logits, seen, 1.7)
    for b in range(3):
        for v in range(20):
            x = logits[b, v].item()
            want = (x / 1.7 if x > 0 else x * 1.7) if seen[b, v] else x
            assert got[b, v].item() == pytest.approx(want)
    assert torch.allclose(apply_temperature(logits, 0.5), logits * 2)
    with pytest.raises(ValueError):
        apply_temperature(logits, 0.0)


def test_sample_next_greedy_and_filters():
    logits = torch.randn(4, 30)
    assert torch.equal(sample_next(logits, temperature=0), logits.argmax(-1))
    assert torch.equal(sample_next(logits, temperature=1.0, top_k=1), logits.argmax(-1))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, top_k=3, generator=g) for _ in range(200)])  # (200, 4)
    top3 = logits.topk(3, -1).indices
    assert all(bool(torch.isin(draws[:, b], top3[b]).all()) for b in range(4))


# ---------------------------------------------------------------------------------------------- cache == full forward


@pytest.mark.parametrize("name", TINY)
def test_cached_decode_equals_full_forward_every_step(name):
    model = tiny(name)
    prompt = torch.tensor([PROMPTS[0]])
    seq = tokens(generate(model, prompt, max_new_tokens=30, temperature=0))[0]  # past tiny-gpt3's window of 8
    full = torch.tensor([PROMPTS[0] + seq])
    with torch.no_grad():
        ref = model(full).logits[0]  # (T, V)
        cache = make_kv_cache(model.config, full.shape[1])
        step_logits = [model(prompt, past_key_values=cache).logits[0, -1]]
        for t in range(prompt.shape[1], full.shape[1] - 1):
            step_logits.append(model(full[:, t : t + 1], past_key_values=cache).logits[0, -1])
    P = prompt.shape[1]
    assert torch.allclose(torch.stack(step_logits), ref[P - 1 : -1], atol=1e-5)
    assert seq == ref[P - 1 : -1].argmax(-1).tolist()  # each generated token is the full forward's argmax


@pytest.mark.parametrize("name", TINY)
def test_batched_left_padded_equals_one_at_a_time(name):
    model = tiny(name)
    batched = tokens(generate(model, PROMPTS, max_new_tokens=20, temperature=0))
    assert batched == [naive_greedy(model, p, 20) for p in PROMPTS]
    # The same batch given as a right-padded tensor + mask is re-packed to left padding.
    ids = torch.tensor([p + [0] * (7 - len(p)) for p in PROMPTS])
    mask = torch.tensor([[1] * len(p) + [0] * (7 - len(p)) for p in PROMPTS])
    assert tokens(generate(model, ids, attention_mask=mask, max_new_tokens=20, temperature=0)) == batched


def test_inputs_embeds_prompt_equals_token_prompt():
    model = tiny("tiny-gpt2")
    ids = torch.tensor([[0] * 5 + PROMPTS[1], PROMPTS[0]])
    mask = (torch.arange(7) >= torch.tensor([[5], [0]])).long()
    embeds = model.transformer.wte(ids).detach()
    want = tokens(generate(model, ids, attention_mask=mask, max_new_tokens=10, temperature=0))
    assert tokens(generate(model, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=10, temperature=0)) == want


# ---------------------------------------------------------------------------------------------- transformers parity


def hf_model(family: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    common = dict(vocab_size=512, n_positions=64, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3,
                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, pad_token_id=0)
    if family == "gpt2":
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**common))
    else:
        hf = transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(afn="gelu", **common))
    return hf.eval().double()


def from_hf(hf, family: str) -> GPT:
    """Local conversion: HF keys → omnigpt keys; Conv1D weights are (in, out), so transpose them."""
    name = "tiny-gpt2" if family == "gpt2" else "tiny-gpt1"
    model = GPT(GPTConfig.from_name(name)).double().eval()
    rename = {"tokens_embed": "wte", "positions_embed": "wpe"}
    state = {}
    for k, v in hf.state_dict().items():
        if k.endswith(("attn.bias", "attn.masked_bias")) and v.dim() > 1 or k == "lm_head.weight":
            continue
        parts = k.split(".")
        parts[1] = rename.get(parts[1], parts[1])
        conv = any(s in k for s in ("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        state[".".join(parts)] = v.t() if conv else v
    model.load_state_dict(state, strict=False)
    assert torch.equal(model.lm_head.weight, state["transformer.wte.weight"])  # tied
    return model


@pytest.mark.parametrize("family", ["gpt2", "gpt1"])
def test_greedy_matches_transformers_generate(family):
    hf = hf_model(family)
    model = from_hf(hf, family)
    P = max(len(p) for p in PROMPTS)
    ids = torch.tensor([[0] * (P - len(p)) + p for p in PROMPTS])  # left padding, pad id 0
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in PROMPTS])
    ours = tokens(generate(model, PROMPTS, max_new_tokens=15, temperature=0))
    with torch.no_grad():
        single = [hf.generate(torch.tensor([p]), max_new_tokens=15, do_sample=False, min_new_tokens=15)[0, len(p):]
                  for p in PROMPTS]
        batch = hf.generate(ids, attention_mask=mask, max_new_tokens=15, do_sample=False, min_new_tokens=15)[:, P:]
    assert ours == [s.tolist() for s in single]
    if family == "gpt2":  # HF builds position ids from the mask for GPT-2; its GPT-1 ignores left padding
        assert ours == batch.tolist()


# ---------------------------------------------------------------------------------------------- controls


def test_temperature_zero_is_deterministic_and_seeds_reproduce():
    model = tiny("tiny-gpt2", std=0.05)
    greedy = [tokens(generate(model, PROMPTS, max_new_tokens=12, temperature=0, seed=s)) for s in (1, 2, None)]
    assert greedy[0] == greedy[1] == greedy[2]
    kw = dict(max_new_tokens=12, temperature=1.0, top_k=100, top_p=0.95, repetition_penalty=1.2)
    a, b, c = (tokens(generate(model, PROMPTS, seed=s, **kw)) for s in (7, 7, 8))
    assert a == b and a != c


def test_each_sequence_stops_on_its_own():
    model = tiny("tiny-gpt2")
    free = tokens(generate(model, PROMPTS, max_new_tokens=12, temperature=0))
    stop = free[1][3]  # sequence 1 produces this at step 3 (and perhaps others later)
    steps = list(generate(model, PROMPTS, max_new_tokens=12, temperature=0, stop_token_ids=[stop]))
    got = tokens(steps)
    for want, row in zip(free, got, strict=True):
        cut = want.index(stop) + 1 if stop in want else len(want)
        assert row == want[:cut]  # the others keep going, unchanged by rows leaving the batch
    assert steps[3].finish_reasons[1] == "stop" and steps[3].finished[1]
    assert steps[4].tokens[1] is None if len(steps) > 4 else True
    assert all(r in ("stop", "length") for r in steps[-1].finish_reasons)


def test_close_stop_and_cancel_end_generation():
    model = tiny("tiny-gpt2")
    gen = generate(model, PROMPTS, max_new_tokens=5, temperature=0)
    gen.stop(1)  # before the first step: row 1 never produces a token
    assert [s.tokens[1] for s in gen] == [None] * 5
    gen = generate(model, PROMPTS, max_new_tokens=20, temperature=0)
    next(gen)
    gen.stop(0)
    step = next(gen)
    assert step.tokens[0] is None and step.finish_reasons[0] == "stop" and step.tokens[1] is not None
    gen.close()
    assert next(gen, None) is None
    cancel = threading.Event()
    gen = generate(model, PROMPTS, max_new_tokens=20, temperature=0, cancel=cancel)
    next(gen)
    cancel.set()
    assert next(gen, None) is None


def test_context_overflow_error_names_the_limit_and_slide_works():
    model = tiny("tiny-gpt3")  # block_size 64, banded layers of window 8
    with pytest.raises(ContextOverflowError, match="block_size=64") as e:
        generate(model, [list(range(1, 41))], max_new_tokens=30)
    assert "70" in str(e.value) and "slide" in str(e.value)
    prompt = list(range(1, 71))  # longer than the context itself
    got = tokens(generate(model, [prompt], max_new_tokens=40, temperature=0, context_overflow="slide"))[0]
    assert got == naive_greedy(model, prompt, 40, keep=48)


@pytest.mark.parametrize("bad, message", [
    (dict(max_new_tokens=-1), "max_new_tokens"), (dict(temperature=-1), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(repetition_penalty=0), "repetition_penalty"),
    (dict(context_overflow="wrap"), "context_overflow"), (dict(stop_token_ids=[999]), "stop token ids"),
])
def test_bad_controls_raise_before_any_work(bad, message):
    kw = dict(max_new_tokens=4) | bad
    with pytest.raises(ValueError, match=message):
        generate(tiny("tiny-gpt2"), [[1, 2]], **kw)
    with pytest.raises(ValueError, match="out of range for vocab_size 512"):
        generate(tiny("tiny-gpt2"), [[1, 600]], max_new_tokens=2)


def test_int8_weights_stay_close_to_float():
    from omnigpt.kernels.quantize import Int8Linear, quantize_int8

    lin = torch.nn.Linear(64, 96)
    x = torch.randn(5, 3, 64)
    q = Int8Linear(lin)
    assert q.weight.dtype == torch.int8 and q(x).shape == (5, 3, 96)
    assert (q(x) - lin(x)).abs().max() < 0.02 * lin(x).abs().max()
    model = tiny("tiny-gpt2", std=0.05)
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        ref = model(ids).logits
        quant = quantize_int8(tiny("tiny-gpt2", std=0.05))
        assert torch.allclose(quant(ids).logits, ref, atol=0.02 * float(ref.abs().max()))
    assert not any(isinstance(m, torch.nn.Linear) for m in quant.modules())
    assert len(tokens(generate(quant, PROMPTS, max_new_tokens=5, temperature=0))[0]) == 5


def test_int4_weights_group_quantized_and_kernel_consistent():
    from omnigpt.kernels.quantize import Int4Linear, Int8Linear, quantize

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 96)
    q = Int4Linear(lin, group_size=32)
    w = lin.weight.detach()
    deq = q.dequantized()  # (96, 64): what the packed kernel multiplies by
    # Each weight is within half a quantization step of its group's grid (step = group range / 15; bf16 scales).
    groups = w.reshape(96, 2, 32)
    step = (groups.amax(-1) - groups.amin(-1)) / 15  # (96, 2)
    assert ((deq - w).abs().reshape(96, 2, 32) <= step[..., None] * 0.5 + 2e-3).all()
    x = torch.randn(5, 3, 64)
    expected = x.bfloat16().float() @ deq.t() + lin.bias.detach()
    assert torch.allclose(q(x), expected, atol=2e-2, rtol=2e-2)
    assert q(x.bfloat16()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="out_features % 16"):
        Int4Linear(torch.nn.Linear(64, 50))
    with pytest.raises(ValueError, match="bits must be 4 or 8"):
        quantize(torch.nn.Sequential(lin), bits=3)
    # A layer the int4 kernel cannot take (50 outputs) falls back to int8; the rest become int4.
    mixed = quantize(torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.Linear(96, 50)), bits=4)
    assert isinstance(mixed[0], Int4Linear) and isinstance(mixed[1], Int8Linear)
    model = quantize(tiny("tiny-gpt2", std=0.05), bits=4)
    assert len(tokens(generate(model, PROMPTS, max_new_tokens=5, temperature=0))[0]) == 5


def test_quantize_transposed_checkpoint_weights():
    """Checkpoints loaded from HF's Conv1D layout hold transposed (non-contiguous) weights: both kinds quantize."""
    from omnigpt.kernels.quantize import Int4Linear, Int8Linear

    lin = torch.nn.Linear(64, 96)
    lin.weight = torch.nn.Parameter(torch.randn(64, 96).t())  # a (96, 64) view of (64, 96) storage
    assert not lin.weight.is_contiguous()
    x = torch.randn(4, 64)
    ref = lin(x)
    for q in (Int8Linear(lin), Int4Linear(lin)):
        assert (q(x) - ref).norm() < 0.15 * ref.norm()


# ---------------------------------------------------------------------------------------------- batch-1 matvec plan


def test_matvec_plan_is_bit_identical_to_linear_and_settles():
    """kernels/matvec.py: every call, while measuring and after, returns F.linear's values bit for bit (the planner
    keeps only exact cuts); each shape ends with a plan; the cuts themselves (leftover rows included) are products."""
    import torch.nn.functional as F

    from omnigpt.kernels.matvec import BLOCKS, MatvecPlanner, blocked_linear

    torch.manual_seed(0)
    planner = MatvecPlanner(repeats=2)
    shapes = [(1001, 64, torch.float32, False), (384, 128, torch.float32, True), (512, 96, torch.bfloat16, True)]
    with torch.no_grad():
        for out_f, in_f, dtype, bias in shapes:  # 1001 rows: blocks of 496, 240, … leave rows for the extra call
            w = torch.randn(out_f, in_f, dtype=dtype)
            b = torch.randn(out_f, dtype=dtype) if bias else None
            for _ in range(2 * len(BLOCKS) + 2):
                x = torch.randn(1, 1, in_f, dtype=dtype)
                y = planner.linear(x, w, b)
                assert y.shape == (1, 1, out_f) and torch.equal(y, F.linear(x, w, b))
            tol = 1e-5 if dtype == torch.float32 else 5e-2
            for k in BLOCKS:
                assert torch.allclose(blocked_linear(x[0], w, b, k).float(), F.linear(x[0], w, b).float(), atol=tol)
    assert len(planner.plans) == 3 and set(planner.plans.values()) <= set(BLOCKS)
    # Outside its domain it is F.linear: two rows, a transposed weight view, gradients on.
    w, x, x2, wt = torch.randn(256, 64), torch.randn(1, 64), torch.randn(2, 64), torch.randn(64, 256).t()
    with torch.no_grad():
        assert torch.equal(planner.linear(x2, w), F.linear(x2, w))
        assert torch.equal(planner.linear(x, wt), F.linear(x, wt))
    w.requires_grad_(True)
    planner.linear(x, w).sum().backward()
    assert w.grad is not None and len(planner.plans) == 3  # nothing planned for these


@pytest.mark.parametrize("name", ["tiny-gpt2", "llama-tiny"])
def test_planned_decode_logits_bitwise_equal_the_plain_forward(name):
    """generate()'s one-row forward (blocks and LM head through the matvec plan, KV cache) gives the same logits,
    bit for bit, as model(...) without it — so greedy tokens are the ones decoding produced before the plan."""
    from omnigpt.generate.decode import _last_logits
    from omnigpt.kernels.matmul import Linear, use_planned_linears
    from omnigpt.kernels.matvec import MatvecPlanner, decode_planner

    model = tiny(name, std=0.05, n_embd=128, vocab_size=1000)  # wide enough that rows can be cut into blocks
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_planned_linears(model) is model  # what generate() does first: module replacement, same weights
    assert type(model.lm_head) is Linear and model.lm_head.weight is model.transformer.wte.weight
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    planner = MatvecPlanner(repeats=1)
    prompt = torch.tensor([PROMPTS[0]])
    plain_cache, planned_cache = make_kv_cache(model.config, 40), make_kv_cache(model.config, 40)
    with torch.no_grad():
        want = model(prompt, past_key_values=plain_cache, logits_to_keep=1).logits[:, -1]
        got = _last_logits(model, prompt, attention_mask=None, position_ids=None, past_key_values=planned_cache,
                           planner=planner)
        for step in range(20):
            assert torch.equal(got, want), step
            tok = want.argmax(-1, keepdim=True)  # (1, 1)
            pos = torch.tensor([[prompt.shape[1] + step]])
            want = model(tok, past_key_values=plain_cache, logits_to_keep=1).logits[:, -1]
            got = _last_logits(model, tok, attention_mask=None, position_ids=pos, past_key_values=planned_cache,
                               planner=planner)
    assert decode_planner() is None  # the plan is on only inside each call
    assert any(k.endswith("/nobias") for k in planner.plans)  # the LM head went through it too
    assert len(planner.plans) >= 4


def test_generate_batch1_matches_full_forward_on_a_plannable_model():
    """KV-cache decoding == re-running the full forward, with shapes the matvec plan cuts (two threads, as decoding
    runs outside the tests) and a forced cut of every product into 2 blocks (values within 1e-5, same tokens)."""
    from omnigpt.generate import decode
    from omnigpt.kernels.matvec import MatvecPlanner

    model = tiny("tiny-gpt2", std=0.05, n_embd=128, vocab_size=1000)
    want = naive_greedy(model, PROMPTS[0], 25)
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert tokens(generate(model, [PROMPTS[0]], max_new_tokens=25, temperature=0))[0] == want
        assert tokens(generate(model, [PROMPTS[0]], max_new_tokens=25, temperature=0))[0] == want  # plans settled
    finally:
        torch.set_num_threads(n)
    forced = MatvecPlanner(plans={f"{i}x{o}/float32/{b}": 2 for i, o, b in
                                  [(128, 384, "bias"), (128, 128, "bias"), (128, 512, "bias"), (512, 128, "bias"),
                                   (128, 1000, "nobias")]})
    cache = make_kv_cache(model.config, 40)
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        logits = decode._last_logits(model, ids, attention_mask=None, position_ids=None, past_key_values=cache,
                                     planner=forced)
        ref = model(ids).logits[:, -1]
    assert torch.allclose(logits, ref, atol=1e-5) and int(logits.argmax()) == want[0]


# ---------------------------------------------------------------------------------------------- text


class ByteTokenizer:
    """One token per UTF-8 byte (ids 0..255), EOS 256: multi-byte characters span several tokens."""

    eos_token_id = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def test_text_stream_never_emits_partial_characters_or_stop_strings():
    text = "héllo wörld ✓ 🙂 ST STOP after"
    s = TextStream(ByteTokenizer(), stop=["STOP"])
    deltas = [s.push(t) for t in ByteTokenizer().encode(text)]
    assert "".join(deltas) == "héllo wörld ✓ 🙂 ST " and s.stopped
    assert not any("\ufffd" in d for d in deltas)
    s = TextStream(ByteTokenizer(), stop=["ab"])
    assert [s.push(t) for t in b"xac"] == ["x", "", "ac"]
    s.push(ord("a"))
    assert s.flush() == "a" and s.text == "xaca"  # a held-back tail is plain text once the sequence ends


class LetterTokenizer:
    """Token i is one letter or a space, so any generated id decodes to readable text; EOS 511."""

    eos_token_id = 511
    alphabet = "abcdefghijklmnopqrstuvwxyz "

    def encode(self, text: str) -> list[int]:
        return [self.alphabet.index(c) for c in text]

    def decode(self, ids) -> str:
        return "".join(self.alphabet[i % len(self.alphabet)] for i in ids if i != self.eos_token_id)


def test_stream_text_ends_at_stop_string_and_eos():
    model = tiny("tiny-gpt2")
    tok = LetterTokenizer()
    free = generate_text(model, tok, "hi", max_new_tokens=30, temperature=0, stop_token_ids=[])
    deltas = list(stream_text(model, tok, "hi", max_new_tokens=30, temperature=0, stop_token_ids=[]))
    assert "".join(deltas) == free and len(deltas) > 1
    stop = free[5:7]
    cut = generate_text(model, tok, "hi", max_new_tokens=30, temperature=0, stop=[stop], stop_token_ids=[])
    assert cut == free[: free.index(stop)]
    batch = generate_text(model, tok, ["hi", "a longer prompt"], max_new_tokens=30, temperature=0, stop=[stop],
                          stop_token_ids=[])
    assert batch[0] == cut


# ---------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from omnigpt.checkpoints.pretrained import save_pretrained
    from omnigpt.text.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .,")
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("tiny-gpt2", vocab_size=tok.vocab_size, initializer_range=0.3)).eval()
    d = tmp_path_factory.mktemp("tiny") / "model"
    save_pretrained(model, d, tok)
    return d, model, tok


def test_cli_streams_text_as_it_is_produced(model_dir, monkeypatch):
    from omnigpt.cli.main import main

    d, model, tok = model_dir
    writes = []

    class Recorder:  # stdout that remembers each write and whether it was flushed right after
        def write(self, s):
            writes.append([s, False])

        def flush(self):
            if writes:
                writes[-1][1] = True

    monkeypatch.setattr("sys.stdout", Recorder())
    assert main(["generate", "--model", str(d), "--prompt", "the cat", "--max-new-tokens", "12",
                 "--temperature", "0"]) == 0
    want = generate_text(model, tok, "the cat", max_new_tokens=12, temperature=0)
    assert "".join(s for s, _ in writes) == want + "\n"
    assert len(writes) > 2 and all(flushed for _, flushed in writes)


def test_cli_reads_prompts_from_stdin(model_dir):
    import subprocess
    import sys

    d, model, tok = model_dir
    out = subprocess.run([sys.executable, "-m", "omnigpt", "generate", "--model", str(d), "--prompt", "-",
                          "--max-new-tokens", "8", "--temperature", "0"],
                         input="the cat\na dog\n", capture_output=True, text=True, timeout=120,
                         env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    want = generate_text(model, tok, ["the cat", "a dog"], max_new_tokens=8, temperature=0)
    assert out.stdout == "".join(w + "\n" for w in want)


def test_cli_missing_model_is_one_line_error(model_dir, capsys):
    from omnigpt.cli.main import main

    assert main(["generate", "--model", str(model_dir[0] / "missing"), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "Traceback" not in err
