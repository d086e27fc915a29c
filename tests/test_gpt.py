"""Model core invariants: attention paths agree, causality, banded windows, GPT-1/2 block structure, heads,
KV cache == full forward, a tiny model overfits, determinism, bf16 autocast, the CPU kernels swapped in, and bad
input (checked at the edge: the HF facade and ``generate`` run ``generate.inputs.check_inputs``)."""

import math

import pytest
import torch
import torch.nn.functional as F

from omnigpt import GPT, GPTConfig, GPTForSequenceClassification, make_kv_cache
from omnigpt.hf.gpt2 import GPT2LMHeadModel
from omnigpt.kernels import attention as attention_kernels
from omnigpt.kernels.attention import flash_attention_fp32_backward, use_fp32_backward_attention
from omnigpt.models.gpt import CausalSelfAttention, attention_reference, build_attention_mask

TINY = ["tiny-gpt1", "tiny-gpt2", "tiny-gpt3"]


def pair(name: str, **kw) -> tuple[GPT, GPT]:
    """The same weights behind the fused (sdpa) and the written-out (eager) attention."""
    fused = GPT(GPTConfig.from_name(name, attn_implementation="sdpa", **kw)).eval()
    eager = GPT(GPTConfig.from_name(name, attn_implementation="eager", **kw)).eval()
    eager.load_state_dict(fused.state_dict())
    return fused, eager


# ---------------------------------------------------------------------------------------------- attention


@pytest.mark.parametrize("name", TINY)
def test_fused_and_reference_attention_agree_causal(name):
    fused, eager = pair(name)
    idx = torch.randint(0, 512, (3, 40))
    assert torch.allclose(fused(idx).logits, eager(idx).logits, atol=1e-5)


@pytest.mark.parametrize("name", TINY)
def test_fused_and_reference_attention_agree_with_padding(name):
    fused, eager = pair(name)
    idx = torch.randint(0, 512, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[0, :7] = 0  # left padding
    mask[1, 15:] = 0  # right padding
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    a = fused(idx, attention_mask=mask, position_ids=pos).logits
    b = eager(idx, attention_mask=mask, position_ids=pos).logits
    real = mask.bool()
    assert torch.allclose(a[real], b[real], atol=1e-5)
    assert torch.isfinite(a).all() and torch.isfinite(b).all()  # padded query rows: finite, not NaN


def test_reference_attention_is_the_formula():
    """softmax(QKᵀ/√d_k)V by hand, one head, against the module's eager path."""
    cfg = GPTConfig.from_name("tiny-gpt2", n_head=1, attn_implementation="eager")
    attn = CausalSelfAttention(cfg, 0).eval()
    x = torch.randn(1, 6, cfg.n_embd)
    q, k, v = attn.c_attn(x).split(cfg.n_embd, dim=2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(cfg.n_embd)
    scores = scores.masked_fill(torch.triu(torch.ones(6, 6, dtype=torch.bool), 1), float("-inf"))
    expected = attn.c_proj(torch.softmax(scores, dim=-1) @ v)
    assert torch.allclose(attn(x, torch.arange(6)), expected, atol=1e-6)


@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_reference_stands_in_for_sdpa(n_kv_head):
    """``attention_reference`` takes SDPA's arguments and gives its result: causal, masked, grouped-query."""
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 7, 8), torch.randn(2, n_kv_head, 7, 8), torch.randn(2, n_kv_head, 7, 8)
    mask = torch.rand(2, 1, 7, 7) > 0.3
    mask[..., 0] = True  # no empty row
    gqa = n_kv_head != 4
    for kw in ({"is_causal": True}, {"attn_mask": mask}, {"attn_mask": mask, "scale": 0.1}):
        want = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa, **kw)
        assert torch.allclose(attention_reference(q, k, v, enable_gqa=gqa, **kw), want, atol=1e-6)
    weights: list[torch.Tensor] = []
    attention_reference(q, k, v, is_causal=True, enable_gqa=gqa, weights=weights)
    assert weights[0].shape == (2, 4, 7, 7) and (weights[0].triu(1) == 0).all()


def test_padding_does_not_change_real_tokens():
    model = GPT(GPTConfig.from_name("tiny-gpt2")).eval()
    idx = torch.randint(0, 512, (1, 10))
    padded = torch.cat([torch.zeros(1, 4, dtype=torch.long), idx], dim=1)
    mask = torch.cat([torch.zeros(1, 4), torch.ones(1, 10)], dim=1).long()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(padded, attention_mask=mask, position_ids=pos).logits[:, 4:]
    assert torch.allclose(out, model(idx).logits, atol=1e-5)


# ---------------------------------------------------------------------------------------------- causality


@pytest.mark.parametrize("name", TINY)
def test_causality(name):
    model = GPT(GPTConfig.from_name(name)).eval()
    idx = torch.randint(0, 512, (2, 30))
    t = 17
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % 512
    a, b = model(idx).logits, model(changed).logits
    assert torch.equal(a[:, :t], b[:, :t])  # nothing before t may see token t
    assert not torch.allclose(a[:, t:], b[:, t:])


def _visible(attn: CausalSelfAttention, T: int) -> torch.Tensor:
    """(T, T) bool: which inputs j reach output i, read off the Jacobian."""
    x = torch.randn(1, T, attn.c_attn.in_features)
    jac = torch.autograd.functional.jacobian(lambda inp: attn(inp, torch.arange(T)).sum(-1), x)  # (1,T,1,T,C)
    return jac[0, :, 0].abs().sum(-1) > 0


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_banded_layers_see_exactly_their_window(impl):
    cfg = GPTConfig.from_name("tiny-gpt3", local_window=5, attn_implementation=impl)
    T = 16
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    dense, banded = CausalSelfAttention(cfg, 0), CausalSelfAttention(cfg, 1)
    assert dense.window is None and banded.window == 5
    assert torch.equal(_visible(dense, T), j <= i)
    assert torch.equal(_visible(banded, T), (j <= i) & (i - j < 5))


def test_mask_builder_handles_empty_cache_slots():
    mask = build_attention_mask(torch.tensor([3]), torch.tensor([-1, 1, 2, 3]), None, None)
    assert mask.tolist() == [[[[False, True, True, True]]]]


# ---------------------------------------------------------------------------------------------- blocks and init


def test_gpt1_is_post_ln_without_final_ln():
    model = GPT(GPTConfig.from_name("tiny-gpt1")).eval()
    assert model.transformer.ln_f is None
    block, x = model.transformer.h[0], torch.randn(2, 5, 32)
    h = block.ln_1(x + block.attn(x, torch.arange(5)))
    # GELU's tanh approximation, as OpenAI's GPT-1 code and HF openai-gpt compute it
    expected = block.ln_2(h + block.mlp.c_proj(F.gelu(block.mlp.c_fc(h), approximate="tanh")))
    assert torch.allclose(block(x, torch.arange(5)), expected, atol=1e-6)


def test_gpt2_is_pre_ln_with_tanh_gelu():
    model = GPT(GPTConfig.from_name("tiny-gpt2")).eval()
    assert model.transformer.ln_f is not None
    block, x = model.transformer.h[0], torch.randn(2, 5, 32)
    h = x + block.attn(block.ln_1(x), torch.arange(5))
    u = block.ln_2(h)
    expected = h + block.mlp.c_proj(F.gelu(block.mlp.c_fc(u), approximate="tanh"))
    assert torch.allclose(block(x, torch.arange(5)), expected, atol=1e-6)


def test_gpt2_initialisation():
    cfg = GPTConfig.from_name("tiny-gpt2", n_layer=8, n_embd=256, n_head=4, vocab_size=4096, block_size=512)
    model = GPT(cfg)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied
    tr = model.transformer
    assert abs(tr.wte.weight.std().item() - 0.02) < 1e-3
    assert abs(tr.wpe.weight.std().item() - 0.01) < 1e-3
    assert abs(tr.h[0].mlp.c_fc.weight.std().item() - 0.02) < 1e-3
    scaled = 0.02 / math.sqrt(2 * cfg.n_layer)  # residual projections
    for proj in (tr.h[0].attn.c_proj.weight, tr.h[3].mlp.c_proj.weight):
        assert abs(proj.std().item() - scaled) < 5e-4
    assert torch.count_nonzero(tr.h[0].attn.c_attn.bias) == 0


# ---------------------------------------------------------------------------------------------- heads


def test_lm_loss_shifts_labels_and_ignores_minus_100():
    model = GPT(GPTConfig.from_name("tiny-gpt2")).eval()
    idx = torch.randint(0, 512, (2, 12))
    labels = idx.clone()
    labels[0, 5:8] = -100
    out = model(idx, labels=labels)
    logits, target = out.logits[:, :-1].reshape(-1, 512), labels[:, 1:].reshape(-1)
    keep = target != -100
    assert torch.allclose(out.loss, F.cross_entropy(logits[keep], target[keep]), atol=1e-6)


def test_sequence_classification_pools_last_real_token():
    cfg = GPTConfig.from_name("tiny-gpt2", num_labels=3, pad_token_id=0)
    model = GPTForSequenceClassification(cfg).eval()
    idx = torch.randint(1, 512, (2, 9))
    idx[1, 6:] = 0  # right-padded second row
    out = model(idx, labels=torch.tensor([0, 2]))
    h = model.transformer(idx).last_hidden_state
    assert torch.allclose(out.logits, model.score(h[[0, 1], [8, 5]]), atol=1e-6)
    mask = (idx != 0).long()
    assert torch.allclose(model(idx, attention_mask=mask).logits, out.logits, atol=1e-5)
    assert out.loss is not None and out.loss.ndim == 0


# ---------------------------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("name", TINY)
def test_kv_cache_decode_equals_full_forward(name):
    model = GPT(GPTConfig.from_name(name)).eval()
    idx = torch.randint(0, 512, (2, 24))
    full = model(idx).logits
    cache = make_kv_cache(model.config, max_len=24)
    with torch.no_grad():
        steps = [model(idx[:, :10], past_key_values=cache).logits]  # prefill longer than the window (8)
        for t in range(10, 24):
            steps.append(model(idx[:, t : t + 1], past_key_values=cache).logits)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


def test_banded_cache_keeps_only_the_window():
    model = GPT(GPTConfig.from_name("tiny-gpt3")).eval()
    cache = make_kv_cache(model.config, max_len=64)
    with torch.no_grad():
        model(torch.randint(0, 512, (1, 30)), past_key_values=cache)
    assert cache[0].k.shape[2] == 64 and cache[1].k.shape[2] == model.config.local_window


# ---------------------------------------------------------------------------------------------- training behaviour


@pytest.mark.parametrize("name", TINY)
def test_tiny_model_overfits_one_batch(name):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(name))
    idx = torch.randint(0, 512, (4, 32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(idx, labels=idx).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1, loss.item()


def _train_steps(seed: int) -> tuple[list[float], torch.Tensor]:
    torch.manual_seed(seed)
    model = GPT(GPTConfig.from_name("tiny-gpt2", dropout=0.1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        idx = torch.randint(0, 512, (2, 16))
        loss = model(idx, labels=idx).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, model.lm_head.weight.detach().clone()


def test_fixed_seed_is_deterministic():
    (l1, w1), (l2, w2), (l3, _) = _train_steps(1), _train_steps(1), _train_steps(2)
    assert l1 == l2 and torch.equal(w1, w2)
    assert l1 != l3


def test_bf16_autocast_close_to_fp32():
    model = GPT(GPTConfig.from_name("tiny-gpt2")).eval()
    idx = torch.randint(0, 512, (2, 32))
    ref = model(idx).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(idx).logits
    assert low.dtype == torch.bfloat16
    assert (low.float() - ref).abs().max() < 0.05 * ref.abs().max()
    assert (low.float().argmax(-1) == ref.argmax(-1)).float().mean() > 0.9


def test_bf16_training_attention_has_an_fp32_backward():
    """CPU bf16 training runs the flash-attention forward in bf16 (the same kernel as SDPA) and its backward in
    fp32: outputs equal SDPA's, gradients closer to an fp32 reference than SDPA's own bf16 backward."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 32) for _ in range(3))
    dout = torch.randn(2, 4, 64, 32)

    def grads(dtype, fp32_backward):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        if fp32_backward:
            out = flash_attention_fp32_backward(*leaves, 32**-0.5)
        else:
            out = F.scaled_dot_product_attention(*leaves, is_causal=True)
        out.backward(dout.to(dtype))
        return out.detach(), [t.grad.float() for t in leaves]

    ref_out, ref = grads(torch.float32, False)
    sdpa_out, sdpa = grads(torch.bfloat16, False)
    ours_out, ours = grads(torch.bfloat16, True)
    assert torch.equal(ours_out, sdpa_out)
    for r, s, o in zip(ref, sdpa, ours, strict=True):  # mean error: the max is set by the final bf16 rounding
        assert (o - r).abs().mean() < (s - r).abs().mean()
        assert (o - r).abs().max() < 0.02 * r.abs().max()
    # Swapped in by module replacement (the trainer does it for bf16 CPU runs), the model takes this path exactly
    # when training causally in bf16 on CPU; the reference path (eager) is left alone.
    attn = CausalSelfAttention(GPTConfig.from_name("tiny-gpt2"), 0)
    assert attn.sdpa is F.scaled_dot_product_attention
    assert use_fp32_backward_attention(attn).sdpa is attention_kernels.sdpa_fp32_backward
    eager = use_fp32_backward_attention(CausalSelfAttention(GPTConfig.from_name("tiny-gpt2",
                                                                                attn_implementation="eager"), 0))
    assert eager.sdpa is attention_reference
    x = torch.randn(2, 16, attn.c_attn.in_features, requires_grad=True)
    calls = []
    original = attention_kernels.flash_attention_fp32_backward
    try:
        attention_kernels.flash_attention_fp32_backward = lambda *a: calls.append(1) or original(*a)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            attn(x, torch.arange(16)).float().sum().backward()
            with torch.no_grad():
                attn(x, torch.arange(16))
        attn(x, torch.arange(16)).sum().backward()  # fp32: SDPA itself
    finally:
        attention_kernels.flash_attention_fp32_backward = original
    assert len(calls) == 1 and x.grad is not None


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("make, message", [
    (lambda: torch.tensor([[1, 2, 512]]), "out of range for vocab_size 512"),
    (lambda: torch.tensor([[1, -3]]), "token id -3 is out of range"),
    (lambda: torch.zeros(1, 65, dtype=torch.long), "exceeds the model's context block_size 64"),
    (lambda: torch.zeros(1, 4), "integer tensor"),
    (lambda: torch.zeros(4, dtype=torch.long), r"shape \(batch, seq_len\)"),
    (lambda: [[1, 2, 3]], "must be a torch.Tensor"),
    (lambda: torch.zeros(1, 0, dtype=torch.long), "length 0"),
])
def test_bad_input_raises_value_error_naming_the_limit(make, message):
    model = GPT2LMHeadModel(GPTConfig.from_name("tiny-gpt2"))  # the facade checks; GPT itself trusts its input
    with pytest.raises(ValueError, match=message):
        model(make())


def test_bad_mask_and_overflowing_cache_raise():
    model = GPT2LMHeadModel(GPTConfig.from_name("tiny-gpt2")).eval()
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    cache = make_kv_cache(model.config)
    model(torch.zeros(1, 60, dtype=torch.long), past_key_values=cache)
    with pytest.raises(ValueError, match="block_size 64"):
        model(torch.zeros(1, 5, dtype=torch.long), past_key_values=cache)
    with pytest.raises(ValueError, match="position_ids must be in"):
        model(torch.zeros(1, 5, dtype=torch.long), position_ids=torch.tensor([[0, 1, 2, 3, 64]]))
    with pytest.raises(ValueError, match="inputs_embeds must have shape"):
        model(inputs_embeds=torch.zeros(1, 5, 7))
    for lm in (model, GPT(model.config)):
        with pytest.raises(ValueError, match="labels must have shape"):
            lm(torch.zeros(1, 5, dtype=torch.long), labels=torch.zeros(1, 4, dtype=torch.long))

