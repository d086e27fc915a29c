"""The GPT decoder: GPT-1, GPT-2, GPT-3 and Llama as configurations of one model.

The evolution, as config fields (``config.py``):

* GPT-1: post-LN blocks (``LN(x + f(x))``), learned positions ``wpe``, GELU MLP, no final LayerNorm.
* GPT-2: pre-LN blocks (``x + f(LN(x))``) and a final ``ln_f``; scaled residual init.
* GPT-3: GPT-2 with alternating dense and locally banded (``local_window``) attention layers.
* Llama (and SmolLM2): GPT-2's pre-norm block with four substitutions — rotary position embeddings rotate each
  query/key pair of channels by a position-dependent angle instead of adding ``wpe`` (``position_embedding=
  "rope"``); RMSNorm, x/rms(x)·g with no mean and no bias (``norm="rmsnorm"``); a SwiGLU MLP,
  c_proj(silu(x W_gate) ⊙ x W_up) (``mlp="swiglu"``); grouped-query attention, ``n_kv_head`` key/value heads
  each shared by ``n_head / n_kv_head`` query heads, which shrinks the KV cache (``n_kv_head``); no biases.

Reading order, top to bottom: the attention mask, rotary embeddings, self-attention softmax(QKᵀ/√d_k)V (written
out, and fused through ``scaled_dot_product_attention``), the MLP (GELU or SwiGLU), the block (pre- or post-norm),
the KV cache, the backbone (``GPTModel``) and its heads (causal LM ``GPT``, ``GPTForSequenceClassification``).

References: nanoGPT ``model.py`` (layout, names), HF ``modeling_gpt2.py`` / ``modeling_openai.py`` /
``modeling_llama.py`` (numerics we match to 1e-5), the GPT-1/2/3 and Llama papers. Module names follow the GPT-2
checkpoint (``wte, wpe, h.N.ln_1, attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj, ln_f, lm_head``) so weight
conversion is a key map plus the Conv1D transpose. Deliberate deviations: weights are ``nn.Linear`` (out, in), not
HF's Conv1D (in, out); GPT-1 uses the same names as GPT-2 (HF calls its embeddings ``tokens_embed``/
``positions_embed``); Llama keeps GPT-2's names and fused projections — ``c_attn`` is HF's q_proj, k_proj, v_proj
stacked (Q rows first), ``c_fc`` is gate_proj and up_proj stacked (gate first), ``ln_1``/``ln_2`` are
input_layernorm / post_attention_layernorm — so one matmul does the work of three (or two) while decoding. RoPE uses
HF's "rotate half" channel layout (pairs (i, i + hs/2)), not the original interleaved pairs (2i, 2i + 1): GGUF
files store Q/K rows permuted for the interleaved layout, and their loader undoes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnigpt.config import GPTConfig
from omnigpt.kernels.attention import flash_attention_fp32_backward
from omnigpt.kernels.matmul import Linear

# ------------------------------------------------------------------------------------------------------------
# Attention mask


def build_attention_mask(q_pos: Tensor, k_pos: Tensor, window: int | None, key_padding: Tensor | None) -> Tensor:
    """Boolean mask, True where query i may attend to key j; shape (B or 1, 1, T, S).

    ``q_pos`` (T,) and ``k_pos`` (S,) are absolute positions in the sequence (-1 marks an empty cache slot);
    a key is visible when it is not in the future (causal), within ``window`` positions of the query when the
    layer is banded, and not padding. Every query always sees itself, so no softmax row is empty (padded
    query rows then produce finite values that nobody reads, instead of NaN).
    """
    diff = q_pos[:, None] - k_pos[None, :]  # (T, S): how far back key j lies from query i
    allowed = (diff >= 0) & (k_pos >= 0)[None, :]
    if window is not None:
        allowed = allowed & (diff < window)  # banded: only the last `window` positions, itself included
    mask = allowed[None, None]  # (1, 1, T, S)
    if key_padding is not None:  # (B, S) True = real token
        mask = (mask & key_padding[:, None, None, :]) | (diff == 0)[None, None]
    return mask


# ------------------------------------------------------------------------------------------------------------
# Rotary position embeddings (Su et al. 2021, RoFormer), Llama's replacement for wpe


def rope_cos_sin(position_ids: Tensor, head_size: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos and sin of every rotation angle, each (B|1, T, hs), in fp32 (HF's computation, to the bit).

    Channel pair (i, i + hs/2) of a query or key at position p turns by the angle p·θ^(-2i/hs): fast in the
    first pairs, slow in the last, so the dot product of a query and a key depends on their distance."""
    exponents = torch.arange(0, head_size, 2, dtype=torch.int64, device=position_ids.device).float() / head_size
    inv_freq = 1.0 / (theta ** exponents)  # (hs/2,)
    angles = position_ids.float()[..., None] * inv_freq  # (B|1, T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)  # (B|1, T, hs): pair (i, i + hs/2) shares angle i
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, nh, T, hs) by the angles (B|1, 1, T, hs): (x1, x2) → (x1 cos − x2 sin, x2 cos + x1 sin)."""
    x1, x2 = x.chunk(2, dim=-1)  # first and second half of the channels
    rotated = torch.cat([-x2, x1], dim=-1)  # "rotate_half"
    return x * cos + rotated * sin


# ------------------------------------------------------------------------------------------------------------
# Self-attention


def attention_reference(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float, dropout_p: float = 0.0,
                        return_weights: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """softmax(QKᵀ/√d_k)V, written out. q (B, nh, T, hs), k/v (B, nh, S, hs), mask (B|1, 1, T, S) bool.
    ``return_weights``: also return the attention weights (B, nh, T, S) that multiplied V."""
    att = (q @ k.transpose(-2, -1)) * scale  # (B, nh, T, S): QKᵀ/√d_k, one score per query-key pair
    att = att.masked_fill(~mask, float("-inf"))  # a masked key gets probability exactly 0
    att = torch.softmax(att.float(), dim=-1).to(q.dtype)  # softmax in fp32 for stability under bf16
    if dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)
    y = att @ v  # (B, nh, T, hs): each query's weighted average of the values
    return (y, att) if return_weights else y


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused QKV projection (GPT-2's ``c_attn``).

    Grouped-query attention (Llama 2/3, SmolLM2): with ``n_kv_head`` < ``n_head`` the projection makes ``n_head``
    query heads but only ``n_kv_head`` key and value heads; query head j reads KV head j // (n_head / n_kv_head).
    The KV cache then holds ``n_kv_head`` heads. With rotary embeddings, queries and keys are rotated by their
    positions before the keys are cached."""

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.n_head, self.head_size, self.n_kv_head = config.n_head, config.head_size, config.kv_heads
        self.kv_size = self.n_kv_head * self.head_size  # width of K (and of V): C under multi-head attention
        self.c_attn = Linear(config.n_embd, config.n_embd + 2 * self.kv_size, bias=config.bias)
        self.c_proj = Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.window = config.layer_window(layer_idx)  # None for dense layers, W for GPT-3's banded layers
        # 1/√d_k, optionally divided by (layer index + 1) as HF GPT-2's scale_attn_by_inverse_layer_idx does.
        scale = 1.0 / math.sqrt(self.head_size) if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= layer_idx + 1
        self.scale = scale
        self.implementation = config.attn_implementation
        self.causal = config.causal

    def forward(self, x: Tensor, q_pos: Tensor, padding: Tensor | None = None, cache: KVCache | None = None,
                rope: tuple[Tensor, Tensor] | None = None, output_attentions: bool = False,
                ) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, T, C); q_pos (T,) absolute positions; padding (B, S) True = real token; cache: past keys/values;
        rope: cos, sin (B|1, T, hs) of the tokens' positions when the model uses rotary embeddings.
        ``output_attentions``: take the reference path and also return its weights (B, nh, T, S) (HF's flag)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split([C, self.kv_size, self.kv_size], dim=2)  # (B, T, C), 2 × (B, T, nkv·hs)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.head_size).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_size).transpose(1, 2)
        if rope is not None:  # rotate by position; keys are cached rotated, so past keys never need it again
            cos, sin = rope[0].unsqueeze(1).to(q.dtype), rope[1].unsqueeze(1).to(q.dtype)  # (B|1, 1, T, hs)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_pos = q_pos
        if cache is not None:
            k, v, k_pos = cache.update(k, v)  # (B, nkv, S, hs) with the past prepended; k_pos (S,)

        key_padding = None if padding is None else padding[:, k_pos.clamp(min=0)]  # (B, S)
        dropout_p = self.dropout if self.training else 0.0
        mask: Tensor | None = None
        is_causal = False
        eager = self.implementation == "eager" or output_attentions  # the formula written out (reference path)
        if not self.causal:  # an encoder: every real key is visible, only padding is masked
            if key_padding is not None or eager:
                mask = torch.ones(1, 1, T, k.shape[2], dtype=torch.bool, device=x.device)
                if key_padding is not None:
                    mask = mask & key_padding[:, None, None, :]  # (B, 1, T, S)
        elif self.window is None and key_padding is None and (cache is None or T == 1):
            # Fast paths without a materialised mask: plain causal prefill, or one new token seeing every key.
            is_causal = cache is None and T > 1
        else:
            mask = build_attention_mask(q_pos, k_pos, self.window, key_padding)

        gqa = self.n_kv_head != self.n_head
        fused_backward = is_causal and dropout_p == 0.0 and q.dtype == torch.bfloat16 and q.device.type == "cpu" \
            and torch.is_grad_enabled() and q.requires_grad
        att: Tensor | None = None
        if gqa and (eager or fused_backward):  # these paths want one KV head per query
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)  # (B, nh, S, hs)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            gqa = False
        if eager:
            if mask is None:
                mask = build_attention_mask(q_pos, k_pos, None, None)
            y, att = attention_reference(q, k, v, mask, self.scale, dropout_p, return_weights=True)
        elif fused_backward:
            y = flash_attention_fp32_backward(q, k, v, self.scale)  # training under CPU bf16 autocast
        else:  # enable_gqa: SDPA maps query head j to KV head j // (nh / nkv) itself, without copying K and V
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal,
                                               scale=self.scale, enable_gqa=gqa)
        y = y.transpose(1, 2).reshape(B, T, C)  # re-assemble heads side by side: (B, T, C)
        out = self.resid_dropout(self.c_proj(y))
        return (out, att) if output_attentions else out


# ------------------------------------------------------------------------------------------------------------
# MLP and block

_ACT = {
    "gelu": lambda x: F.gelu(x),  # exact erf GELU (GPT-1, nanoGPT)
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's tanh approximation
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


class MLP(nn.Module):
    """Position-wise feed-forward: Linear(C → 4C), GELU, Linear(4C → C).

    SwiGLU (Shazeer 2020; Llama): c_proj(act(x W_gate) ⊙ x W_up), with ``activation`` silu; ``c_fc`` computes the
    gate and the up projection in one matmul (C → 2H, gate rows first)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.gated = config.mlp == "swiglu"
        hidden = config.mlp_hidden
        self.c_fc = Linear(config.n_embd, 2 * hidden if self.gated else hidden, bias=config.bias)
        self.c_proj = Linear(hidden, config.n_embd, bias=config.bias)
        self.act = _ACT[config.activation]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.c_fc(x)  # (B, T, H), or (B, T, 2H) when gated
        if self.gated:
            gate, up = h.chunk(2, dim=-1)  # 2 × (B, T, H)
            return self.dropout(self.c_proj(self.act(gate) * up))
        return self.dropout(self.c_proj(self.act(h)))


def make_norm(config: GPTConfig) -> nn.Module:
    """LayerNorm (GPT: subtract the mean, divide by the std, scale and shift) or RMSNorm (Llama: divide by the root
    mean square, scale only — cheaper, and as good in practice, Zhang & Sennrich 2019)."""
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.layer_norm_epsilon)
    return nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)  # with a bias in every GPT generation


class Block(nn.Module):
    """One Transformer layer. GPT-2/3 and Llama normalise before each sublayer (pre-norm); GPT-1 after the residual
    add. ``ln_1``/``ln_2`` are LayerNorms, or RMSNorms for Llama.

    With ``config.causal=False`` the same layer is a bidirectional encoder block (ViT, the audio encoder)."""

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.pre_ln = config.norm_position == "pre"
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, q_pos: Tensor | None = None, padding: Tensor | None = None,
                cache: KVCache | None = None, rope: tuple[Tensor, Tensor] | None = None,
                output_attentions: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """The layer's output (B, T, C); with ``output_attentions`` also its attention weights (B, nh, T, S)."""
        if q_pos is None:  # encoders call block(x) or block(x, padding=...): positions 0..T-1
            q_pos = torch.arange(x.shape[1], device=x.device)
        att = None
        if self.pre_ln:  # GPT-2: x + f(LN(x)); the residual stream itself is never normalised
            a = self.attn(self.ln_1(x), q_pos, padding, cache, rope, output_attentions)
            if output_attentions:
                a, att = a
            x = x + a
            x = x + self.mlp(self.ln_2(x))
        else:
            a = self.attn(x, q_pos, padding, cache, rope, output_attentions)
            if output_attentions:
                a, att = a
            x = self.ln_1(x + a)  # GPT-1: LN(x + f(x))
            x = self.ln_2(x + self.mlp(x))
        return (x, att) if output_attentions else x


# ------------------------------------------------------------------------------------------------------------
# KV cache


class KVCache:
    """Preallocated keys and values of one layer, so decoding a token costs O(1) new projections.

    Dense layers keep ``max_len`` slots (B, nkv, max_len, hs) — nkv = n_head, or fewer KV heads under grouped-query
    attention (SmolLM2: 3 instead of 9, a third of the memory). Banded layers (GPT-3's local attention) keep only a
    ring of ``window`` slots: a key older than the window can never be attended again. Storage is allocated on
    the first update, in the dtype the projections produce (bf16 under autocast).
    """

    def __init__(self, max_len: int, window: int | None = None) -> None:
        self.capacity = max_len if window is None else min(window, max_len)
        self.window = window
        self.pos = 0  # absolute positions written so far
        self.k: Tensor | None = None
        self.v: Tensor | None = None
        # (capacity,) absolute position held by each slot: -1 while empty in a ring; slot i is position i when dense.
        self.slot_pos: Tensor | None = None
        self.max_len = max_len

    def _allocate(self, k: Tensor) -> None:
        B, nh, _, hs = k.shape
        self.k = k.new_zeros(B, nh, self.capacity, hs)
        self.v = k.new_zeros(B, nh, self.capacity, hs)
        if self.window is None:  # dense: made once, so a decode step slices it instead of calling arange
            self.slot_pos = torch.arange(self.capacity, device=k.device)
        else:
            self.slot_pos = torch.full((self.capacity,), -1, dtype=torch.long, device=k.device)

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append k, v (B, nkv, T, hs); return all visible keys, values (B, nkv, S, hs) and their positions (S,)."""
        T = k.shape[2]
        if self.pos + T > self.max_len:
            raise ValueError(f"KV cache overflow: {self.pos} cached + {T} new positions > max_len {self.max_len}")
        if self.k is None:
            self._allocate(k)
        assert self.k is not None and self.v is not None and self.slot_pos is not None
        if self.window is None:
            self.k[:, :, self.pos : self.pos + T] = k
            self.v[:, :, self.pos : self.pos + T] = v
            self.pos += T
            return self.k[:, :, : self.pos], self.v[:, :, : self.pos], self.slot_pos[: self.pos]
        # Ring buffer: attend over (old ring ∪ new keys), then keep only the newest `capacity` in the ring.
        new_pos = torch.arange(self.pos, self.pos + T, device=k.device)
        k_all = torch.cat([self.k, k], dim=2)
        v_all = torch.cat([self.v, v], dim=2)
        pos_all = torch.cat([self.slot_pos, new_pos])
        keep = min(T, self.capacity)
        slots = new_pos[-keep:] % self.capacity
        self.k[:, :, slots] = k[:, :, -keep:]
        self.v[:, :, slots] = v[:, :, -keep:]
        self.slot_pos[slots] = new_pos[-keep:]
        self.pos += T
        return k_all, v_all, pos_all

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (e.g. drop finished sequences)."""
        if self.k is not None and self.v is not None:
            self.k, self.v = self.k[index], self.v[index]


def make_kv_cache(config: GPTConfig, max_len: int | None = None) -> list[KVCache]:
    """One cache per layer, sized for ``max_len`` positions (default: the whole context)."""
    max_len = max_len or config.block_size
    return [KVCache(max_len, config.layer_window(i)) for i in range(config.n_layer)]


# ------------------------------------------------------------------------------------------------------------
# Backbone and heads


@dataclass
class GPTOutput:
    """What the models return; field names follow ``transformers``' ModelOutput classes."""

    last_hidden_state: Tensor  # (B, T, C) after ln_f when the model has one
    logits: Tensor | None = None  # (B, T, V) for the LM, (B, num_labels) for classification
    loss: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None  # embeddings + each block's output, when asked
    attentions: tuple[Tensor, ...] | None = None  # each layer's softmax(QKᵀ/√d_k) (B, nh, T, S), when asked
    past_key_values: list[KVCache] | None = None


class GPTModel(nn.Module):
    """Token + learned position embeddings (or rotary ones, applied inside attention), ``n_layer`` blocks,
    optional final norm."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        # Llama has no wpe: positions enter as rotations of queries and keys (cos/sin computed per forward from the
        # position ids, T × hs/2 angles — no buffer, so meta-device construction and dtype casts cannot touch it).
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.position_embedding == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = make_norm(config) if config.final_layer_norm else None

    def _check_inputs(self, input_ids: Tensor | None, inputs_embeds: Tensor | None, past: int,
                      attention_mask: Tensor | None, position_ids: Tensor | None) -> tuple[int, int, bool]:
        """Reject bad input with a ValueError that names the limit, before torch fails somewhere deep inside.
        Returns B, T and whether ``attention_mask`` marks any padding.

        The value checks (id and position ranges, padding) need numbers on the host: they travel together in one
        transfer, so a decode step pays one device sync for validation rather than five."""
        cfg = self.config
        host = _host_values(input_ids, position_ids, attention_mask)  # ids min/max, positions min/max, mask min
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            if not isinstance(input_ids, Tensor):
                raise ValueError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
            if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
                raise ValueError(f"input_ids must be an integer tensor, got dtype {input_ids.dtype}")
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must have shape (batch, seq_len), got {tuple(input_ids.shape)}")
            B, T = input_ids.shape
            if T > 0:
                lo, hi = host["ids"]
                if lo < 0 or hi >= cfg.vocab_size:
                    bad = lo if lo < 0 else hi
                    raise ValueError(f"token id {bad} is out of range for vocab_size {cfg.vocab_size}")
        else:
            assert inputs_embeds is not None
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != cfg.n_embd:
                raise ValueError(f"inputs_embeds must have shape (batch, seq_len, {cfg.n_embd}), "
                                 f"got {tuple(inputs_embeds.shape)}")
            B, T = inputs_embeds.shape[:2]
        if T == 0:
            raise ValueError("input has sequence length 0")
        if past + T > cfg.block_size:
            raise ValueError(f"sequence length {past + T} ({past} cached + {T} new) exceeds the model's context "
                             f"block_size {cfg.block_size}")
        if attention_mask is not None and tuple(attention_mask.shape) != (B, past + T):
            raise ValueError(f"attention_mask must have shape (batch, cached + new) = {(B, past + T)}, "
                             f"got {tuple(attention_mask.shape)}")
        if position_ids is not None:
            if position_ids.shape[-1] != T:
                raise ValueError(f"position_ids must have {T} positions, got shape {tuple(position_ids.shape)}")
            lo, hi = host["positions"]
            if lo < 0 or hi >= cfg.block_size:
                raise ValueError(f"position_ids must be in [0, block_size {cfg.block_size})")
        padded = attention_mask is not None and host["mask"][0] == 0
        return B, T, padded

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                past_key_values: list[KVCache] | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False) -> GPTOutput:
        """``output_attentions``: run every layer's attention on the reference path (the formula written out, as
        ``attn_implementation="eager"``) and return its weights; the default path is untouched."""
        past = past_key_values[0].pos if past_key_values else 0
        B, T, padded = self._check_inputs(input_ids, inputs_embeds, past, attention_mask, position_ids)
        device = self.wte.weight.device
        q_pos = torch.arange(past, past + T, device=device)  # absolute slots in the sequence (for the mask)
        if position_ids is None:
            position_ids = q_pos[None]  # (1, T); left-padded batches pass their own, computed from the mask
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)  # (B, T, C)
        rope = None
        if self.wpe is not None:
            x = self.drop(inputs_embeds + self.wpe(position_ids))  # (B, T, C)
        else:
            x = self.drop(inputs_embeds)
            positions = position_ids.view(-1, T)  # (B|1, T)
            rope = rope_cos_sin(positions, self.config.head_size, self.config.rope_theta)  # 2 × (B|1, T, hs)
        padding = attention_mask.bool() if padded else None  # (B, past + T), True = real token

        hidden: list[Tensor] = []
        attentions: list[Tensor] = []
        for i, block in enumerate(self.h):
            if output_hidden_states:
                hidden.append(x)
            cache = past_key_values[i] if past_key_values else None
            if output_attentions:
                x, att = block(x, q_pos, padding, cache, rope, output_attentions=True)
                attentions.append(att)
            else:
                x = block(x, q_pos, padding, cache, rope)
        if self.ln_f is not None:
            x = self.ln_f(x)
        if output_hidden_states:
            hidden.append(x)
        return GPTOutput(last_hidden_state=x, hidden_states=tuple(hidden) if output_hidden_states else None,
                         past_key_values=past_key_values, attentions=tuple(attentions) if output_attentions else None)


def _host_values(input_ids: Tensor | None, position_ids: Tensor | None,
                 attention_mask: Tensor | None) -> dict[str, list[int]]:
    """Min/max of the ids and positions and the mask's min, fetched in one transfer (empty tensors skipped)."""
    parts = {name: t for name, t in (("ids", input_ids), ("positions", position_ids), ("mask", attention_mask))
             if isinstance(t, Tensor) and t.numel() and not t.dtype.is_complex}
    if not parts:
        return {}
    stats = [torch.stack(torch.aminmax(t.long() if t.dtype == torch.bool else t)).long()  # each (2,): min, max
             for t in parts.values()]
    values = torch.cat(stats).tolist()  # the one sync
    return {name: values[2 * i : 2 * i + 2] for i, name in enumerate(parts)}


def init_weights(model: nn.Module, config: GPTConfig) -> None:
    """GPT-2 initialisation: N(0, 0.02) matrices and wte, N(0, 0.01) wpe, zero biases, unit LayerNorms, and
    residual projections scaled by 1/√(2·n_layer) so the residual stream's variance does not grow with depth."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            std = config.initializer_range
            if name.endswith("c_proj"):
                std /= math.sqrt(2 * config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            std = config.wpe_initializer_range if name.endswith("wpe") else config.initializer_range
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)


class GPT(nn.Module):
    """GPT with a causal language-modelling head (HF: GPT2LMHeadModel / OpenAIGPTLMHeadModel)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = GPTModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # one matrix for input and output embeddings
        init_weights(self, config)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() counts a tied matrix once

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, labels: Tensor | None = None,
                inputs_embeds: Tensor | None = None, past_key_values: list[KVCache] | None = None,
                output_hidden_states: bool = False, logits_to_keep: int = 0,
                output_attentions: bool = False) -> GPTOutput:
        """Logits (B, T, V); with ``labels`` (B, T) also the mean next-token loss. Labels are shifted inside, as in
        ``transformers``: position t predicts labels[t + 1]; -100 marks positions without a target.
        ``logits_to_keep=k`` computes logits only for the last k positions (generation needs just one)."""
        out = self.transformer(input_ids, attention_mask, position_ids, inputs_embeds, past_key_values,
                               output_hidden_states, output_attentions)
        h = out.last_hidden_state
        if logits_to_keep:
            h = h[:, -logits_to_keep:]
        out.logits = self.lm_head(h)  # (B, T, V)
        if labels is not None:
            out.loss = causal_lm_loss(out.logits, labels)
        return out


def causal_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of logits[:, t] against labels[:, t + 1], ignoring -100 (HF's convention)."""
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels must have shape {tuple(logits.shape[:2])}, got {tuple(labels.shape)}")
    shift_logits = logits[:, :-1].reshape(-1, logits.size(-1)).float()  # (B·(T-1), V)
    shift_labels = labels[:, 1:].reshape(-1).to(shift_logits.device)  # (B·(T-1),)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)


class GPTForSequenceClassification(nn.Module):
    """GPT backbone + a linear ``score`` on the last real token (HF: GPT2ForSequenceClassification).

    The pooled position is ``sequence_lengths - 1`` when given (right-padded batches need no attention mask:
    causal attention never lets a real token see the padding after it), else the last one the attention mask marks
    real, else the last non-``pad_token_id`` token, else the last position. One label → regression (MSE), more →
    single-label cross-entropy."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = GPTModel(config)
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        init_weights(self, config)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, labels: Tensor | None = None,
                inputs_embeds: Tensor | None = None, output_hidden_states: bool = False,
                sequence_lengths: Tensor | None = None) -> GPTOutput:
        out = self.transformer(input_ids, attention_mask, position_ids, inputs_embeds,
                               output_hidden_states=output_hidden_states)
        h = out.last_hidden_state  # (B, T, C)
        B, T = h.shape[:2]
        idx = torch.arange(T, device=h.device)
        if sequence_lengths is not None:
            last = sequence_lengths.to(h.device) - 1
        elif attention_mask is not None:
            last = (idx * attention_mask.to(h.device).bool()).argmax(-1)  # rightmost real token
        elif input_ids is not None and self.config.pad_token_id is not None:
            last = (idx * (input_ids != self.config.pad_token_id)).argmax(-1)
        else:
            last = torch.full((B,), T - 1, device=h.device)
        out.logits = self.score(h[torch.arange(B, device=h.device), last])  # (B, num_labels)
        if labels is not None:
            if self.config.num_labels == 1:
                out.loss = F.mse_loss(out.logits.squeeze(-1).float(), labels.float())
            else:
                out.loss = F.cross_entropy(out.logits.float(), labels.view(-1))
        return out
