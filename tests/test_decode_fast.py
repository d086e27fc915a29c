"""The decode step over a static cache (``generate.fast``): eager == the generic KV-cache path bit for bit, compiled ==
the full forward to float rounding (one compilation for every step and length), a failed compile falls back, and
models whose forward is overridden keep the generic path."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_generate import tiny, tokens

from omnigpt import GPT, make_kv_cache
from omnigpt.generate import fast
from omnigpt.generate.decode import _last_logits, generate
from omnigpt.generate.fast import DecodeSession, supports
from omnigpt.kernels.matmul import use_planned_linears
from omnigpt.kernels.matvec import MatvecPlanner
from omnigpt.kernels.quantize import quantize

PROMPT = [5, 17, 300, 42, 9, 1, 77]

pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def full_logits(model: GPT, seq: list[int]) -> torch.Tensor:
    """Logits (T, V) of the whole sequence in one forward, no cache: the reference every decode path must meet."""
    return model(torch.tensor([seq])).logits[0]


@torch.inference_mode()
def session_logits(model: GPT, seq: list[int], P: int, compile: bool | str = False) -> torch.Tensor:
    """Teacher-forced logits (T - P + 1, V) through a DecodeSession: prompt seq[:P], then one token at a time."""
    session = DecodeSession(model, 1, len(seq), compile=compile)
    out = [session.prefill(torch.tensor([seq[:P]]))[0]]
    for t in seq[P:-1]:
        out.append(session.step(torch.tensor([t]))[0])
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------- eager


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-gpt3", "llama-tiny"])
def test_eager_step_bitwise_equals_the_generic_kv_cache_path(name):
    """The same ``model(...)`` call, kernels and matvec plan as ``_last_logits`` over ``KVCache``s: equal bits at
    every step, and within 1e-5 of the full forward. GPT-3's banded layers are the exception to the bits:
    ``KVCache`` keeps a ring of ``window`` slots, the session every slot with a banded mask (as the full forward
    does), so the softmax sums over different (masked) sets and rounds differently."""
    model = use_planned_linears(tiny(name, std=0.05, n_embd=128, vocab_size=1000))  # wide: the plan cuts rows
    seq = PROMPT + [int(t) for t in torch.randint(0, 1000, (25,))]
    P = len(PROMPT)
    planner = MatvecPlanner(repeats=1)
    cache = make_kv_cache(model.config, len(seq))
    with torch.inference_mode():
        want = [_last_logits(model, torch.tensor([seq[:P]]), attention_mask=None, position_ids=None,
                             past_key_values=cache, planner=planner)[0]]
        for i, t in enumerate(seq[P:-1]):
            want.append(_last_logits(model, torch.tensor([[t]]), attention_mask=None,
                                     position_ids=torch.tensor([[P + i]]), past_key_values=cache, planner=planner)[0])
        session = DecodeSession(model, 1, len(seq), planner=planner)
        got = [session.prefill(torch.tensor([seq[:P]]))[0]] + [session.step(torch.tensor([t]))[0] for t in seq[P:-1]]
    for step, (g, w) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(g, w) if not model.config.local_window else torch.allclose(g, w, atol=1e-6), step
    assert torch.allclose(torch.stack(got), full_logits(model, seq)[P - 1 : -1], atol=1e-5)


def test_generate_batch_rows_leave_and_window_slides_on_the_session(monkeypatch):
    """``generate(compile=...)`` drives a session: an unpadded batch decodes through one; a row that stops leaves it
    (keep_rows) and the others go on as if alone; with context_overflow="slide" the session re-encodes the window,
    as the generic path does. (The step is "compiled" to itself here: this tests the plumbing, not inductor.)"""
    monkeypatch.setitem(fast._COMPILED, "default", fast.decode_step)
    model = tiny("llama-tiny")
    prompts = [PROMPT, [9, 8, 7, 6, 5, 4, 3]]
    alone = [tokens(generate(model, [p], max_new_tokens=20, temperature=0))[0] for p in prompts]
    stop = alone[0][3]  # row 0 stops at its 4th token; row 1 must not be disturbed
    together = tokens(generate(model, prompts, max_new_tokens=20, temperature=0, stop_token_ids=[stop], compile=True))
    assert together == [seq[: seq.index(stop) + 1] if stop in seq else seq for seq in alone]
    gen = dict(max_new_tokens=90, temperature=0, context_overflow="slide")  # block_size 64: slides twice
    slid = tokens(generate(model, [PROMPT], **gen, compile=True))[0]
    assert len(slid) == 90 and slid == tokens(generate(model, [PROMPT], **gen))[0]


def test_models_with_their_own_forward_keep_the_generic_path(monkeypatch):
    model = tiny("tiny-gpt2")
    assert supports(model)
    calls = []
    backbone_forward = model.transformer.forward

    def counted(*args, **kwargs):
        calls.append(1)
        return backbone_forward(*args, **kwargs)

    monkeypatch.setattr(model.transformer, "forward", counted)  # what tests/serve_helpers.slowed does
    assert not supports(model)
    assert len(tokens(generate(model, [PROMPT], max_new_tokens=5, temperature=0, compile=True))[0]) == 5
    assert len(calls) == 5  # the prompt and 4 steps went through the patched backbone, not a session


# ---------------------------------------------------------------------------------------------- compiled


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("name", ["llama-tiny", "tiny-gpt3"])
def test_compiled_step_equals_the_full_forward_and_compiles_once(name):
    """The compiled decode step gives the full forward's logits (to float rounding) at every step, and one graph
    serves every position and every generation length."""
    model = tiny(name)
    seq = PROMPT + [int(t) for t in torch.randint(0, 512, (30,))]
    before = _graphs()
    got = session_logits(model, seq, len(PROMPT), compile=True)
    assert _graphs() - before == 1
    assert torch.allclose(got, full_logits(model, seq)[len(PROMPT) - 1 : -1], atol=1e-4, rtol=1e-4)
    # Other lengths, other prompts: greedy tokens equal the eager ones, nothing compiled again.
    for n, prompt in [(12, PROMPT[:3]), (40, PROMPT)]:
        assert tokens(generate(model, [prompt], max_new_tokens=n, temperature=0, compile=True)) == \
            tokens(generate(model, [prompt], max_new_tokens=n, temperature=0))
    assert _graphs() - before == 1


def test_compiled_step_with_int4_and_int8_weights():
    """Packed int4 (out % 16 == 0, in % 32 == 0) and int8 linears inside the compiled graph: the eager step's logits
    up to the rounding of their bf16 activations."""
    model = quantize(tiny("llama-tiny", std=0.1), bits=4)
    kinds = {type(m).__name__ for m in model.modules()}
    assert {"Int4Linear", "Int8Linear"} <= kinds  # mlp.c_proj has in_features 48: int8
    seq = PROMPT + [int(t) for t in torch.randint(0, 512, (20,))]
    eager = session_logits(model, seq, len(PROMPT))
    compiled = session_logits(model, seq, len(PROMPT), compile=True)
    assert torch.allclose(compiled, eager, atol=2e-2 * float(eager.abs().max()))


def test_failed_compile_warns_once_and_decodes_eagerly(monkeypatch):
    model = tiny("llama-tiny")
    want = tokens(generate(model, [PROMPT], max_new_tokens=10, temperature=0))

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler here")

    monkeypatch.setattr(fast, "_COMPILED", {"reduce-overhead": broken})
    monkeypatch.setattr(fast, "_FAILED", set())
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler here"):
        got = tokens(generate(model, [PROMPT], max_new_tokens=10, temperature=0, compile="reduce-overhead"))
    assert got == want
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the mode is remembered as failed: no second try, no second warning
        assert tokens(generate(model, [PROMPT], max_new_tokens=10, temperature=0, compile="reduce-overhead")) == want


def test_compile_argument_is_checked():
    with pytest.raises(ValueError, match="compile must be"):
        generate(tiny("tiny-gpt2"), [PROMPT], max_new_tokens=2, compile=1)  # type: ignore[arg-type]
