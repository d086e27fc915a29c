"""The GPT decoder: GPT-1, GPT-2, GPT-3 and Llama as configurations of one model.

GPT-1: post-LN blocks (``LN(x + f(x))``), learned positions ``wpe``, GELU MLP, no final LayerNorm. GPT-2: pre-LN
blocks (``x + f(LN(x))``), a final ``ln_f``, scaled residual init. GPT-3: GPT-2 with alternating dense and locally
banded (``local_window``) attention layers. Llama (SmolLM2): GPT-2's block with rotary position embeddings instead of
``wpe``, RMSNorm, a SwiGLU MLP, grouped-query attention (``n_kv_head`` KV heads, a smaller cache) and no biases.
Qwen2: Llama with biases on the q/k/v projections (``qkv_bias``; ``c_attn``'s bias is the three stacked).

Top to bottom: rotary embeddings, the attention mask, softmax(QKᵀ/√d_k)V written out (the reference), attention
(one path: ``scaled_dot_product_attention``), MLP, block, backbone (``GPTModel``), heads (``GPT``,
``GPTForSequenceClassification``). Not here, as in gpt-fast's model.py: KV caches (``models/kv_cache.py``; attention
only calls ``cache.update``), CPU kernels (``omnigpt.kernels`` swaps them in by module replacement), input checks
(``generate.inputs.check_inputs``, run by ``generate`` and the HF facade). The forward trusts its input and never
waits for the host, so the decode step compiles as one graph.

References: nanoGPT ``model.py`` (layout, names), HF ``modeling_gpt2.py`` / ``modeling_llama.py`` (numerics we match
to 1e-5), the GPT-1/2/3 and Llama papers. Names follow the GPT-2 checkpoint (``wte, wpe, h.N.ln_1, attn.c_attn,
attn.c_proj, mlp.c_fc, mlp.c_proj, ln_f, lm_head``). Deliberate deviations: ``nn.Linear`` (out, in) weights, not
HF's Conv1D (in, out); GPT-1 and Llama keep GPT-2's names and fused projections (``c_attn`` = q, k, v projections
stacked, ``c_fc`` = gate and up stacked: one matmul instead of three or two while decoding); RoPE pairs channels
(i, i + hs/2) as HF does ("rotate half"), GGUF's interleaved layout is undone on load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnigpt.config import GPTConfig


class Cache(Protocol):
    """A layer's KV cache, as attention sees it (``models/kv_cache.py``): ``pos`` positions cached before this call;
    ``update`` stores k, v (B, nkv, T, hs) and returns all visible keys, values (B, nkv, S, hs), positions (S,)."""

    pos: int

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]: ...


def rope_cos_sin(position_ids: Tensor, head_size: int, theta: float) -> tuple[Tensor, Tensor]:
    """RoPE (Su et al. 2021), Llama's replacement for wpe: cos and sin (B|1, T, hs) of every angle, fp32 as in HF.
    Channel pair (i, i + hs/2) at position p turns by p·θ^(-2i/hs), so a query·key product depends on distance."""
    exponents = torch.arange(0, head_size, 2, dtype=torch.int64, device=position_ids.device).float() / head_size
    inv_freq = 1.0 / (theta ** exponents)  # (hs/2,)
    angles = position_ids.float()[..., None] * inv_freq  # (B|1, T, hs/2)
    angles = torch.cat([angles, angles], dim=-1)  # (B|1, T, hs): pair (i, i + hs/2) shares angle i
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, nh, T, hs) by the angles (B|1, 1, T, hs): (x1, x2) → (x1 cos − x2 sin, x2 cos + x1 sin)."""
    x1, x2 = x.chunk(2, dim=-1)  # first and second half of the channels
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin  # "rotate_half"


def build_attention_mask(q_pos: Tensor, k_pos: Tensor, window: int | None, key_padding: Tensor | None) -> Tensor:
    """(B|1, 1, T, S) bool, True where query i may attend to key j. ``q_pos`` (T,), ``k_pos`` (S,): absolute positions
    (-1 marks an empty cache slot). A key is visible when not in the future, within ``window`` of the query in a
    banded layer, and not padding. Every query sees itself, so no softmax row is empty (no NaN in padded rows)."""
    diff = q_pos[:, None] - k_pos[None, :]  # (T, S): how far back key j lies from query i
    allowed = (diff >= 0) & (k_pos >= 0)[None, :]
    if window is not None:
        allowed = allowed & (diff < window)  # banded: only the last `window` positions, itself included
    mask = allowed[None, None]  # (1, 1, T, S)
    if key_padding is not None:  # (B, S) True = real token
        mask = (mask & key_padding[:, None, None, :]) | (diff == 0)[None, None]
    return mask


def attention_reference(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
                        is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
                        weights: list[Tensor] | None = None) -> Tensor:
    """softmax(QKᵀ/√d_k)V written out: ``F.scaled_dot_product_attention``'s arguments and result, so it can stand in
    for it (``attn_implementation="eager"``). q (B, nh, T, hs), k/v (B, nkv, S, hs), attn_mask (B|1, 1, T, S) bool,
    True = may attend. ``weights``: a list that receives the attention matrix (B, nh, T, S) that multiplied V."""
    if enable_gqa:  # grouped-query attention: query head j reads KV head j // (nh / nkv)
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]) if scale is None else scale)  # (B, nh, T, S)
    if is_causal:
        attn_mask = torch.ones(att.shape[-2:], dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        att = att.masked_fill(~attn_mask, float("-inf"))  # a masked key gets probability exactly 0
    att = torch.softmax(att.float(), dim=-1).to(q.dtype)  # softmax in fp32 for stability under bf16
    if weights is not None:
        weights.append(att)
    if dropout_p > 0.0:
        att = F.dropout(att, p=dropout_p)
    return att @ v  # (B, nh, T, hs): each query's weighted average of the values


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused QKV projection (GPT-2's ``c_attn``). Grouped-query attention
    (Llama, SmolLM2): ``n_kv_head`` < ``n_head`` key/value heads, query head j reading KV head j // (nh / nkv), so the
    cache holds fewer heads. ``sdpa`` is the one attention call: torch's fused kernel, the reference above
    (``attn_implementation="eager"``), or a kernel ``omnigpt.kernels`` swaps in with the same arguments."""

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.n_head, self.head_size, self.n_kv_head = config.n_head, config.head_size, config.kv_heads
        self.kv_size = self.n_kv_head * self.head_size  # width of K (and of V): C under multi-head attention
        self.c_attn = nn.Linear(config.n_embd, config.n_embd + 2 * self.kv_size, bias=config.bias or config.qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.window = config.layer_window(layer_idx)  # None for dense layers, W for GPT-3's banded layers
        self.causal = config.causal
        # 1/√d_k, optionally divided by (layer index + 1) as HF GPT-2's scale_attn_by_inverse_layer_idx does.
        scale = 1.0 / math.sqrt(self.head_size) if config.scale_attn_weights else 1.0
        self.scale = scale / (layer_idx + 1) if config.scale_attn_by_inverse_layer_idx else scale
        self.sdpa = attention_reference if config.attn_implementation == "eager" else F.scaled_dot_product_attention

    def forward(self, x: Tensor, q_pos: Tensor | None = None, padding: Tensor | None = None,
                cache: Cache | None = None, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """x (B, T, C) → (B, T, C). q_pos (T,): absolute positions (default 0..T-1); padding (B, S): True = real
        token; cache: the layer's past keys/values; rope: cos, sin (B|1, T, hs) of the tokens' positions."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split([C, self.kv_size, self.kv_size], dim=2)  # (B, T, C), 2 × (B, T, nkv·hs)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_kv_head, self.head_size).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv_head, self.head_size).transpose(1, 2)
        if rope is not None:  # rotate by position; keys are cached rotated, so past keys never need it again
            cos, sin = rope[0].unsqueeze(1).to(q.dtype), rope[1].unsqueeze(1).to(q.dtype)  # (B|1, 1, T, hs)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k_pos = q_pos = torch.arange(T, device=x.device) if q_pos is None else q_pos
        if cache is not None:
            k, v, k_pos = cache.update(k, v)  # (B, nkv, S, hs) with the past prepended; k_pos (S,)

        key_padding = None if padding is None else padding[:, k_pos.clamp(min=0)]  # (B, S)
        mask, is_causal = None, False
        if not self.causal:  # an encoder: every real key is visible, only padding is masked
            mask = None if key_padding is None else key_padding[:, None, None, :]  # (B, 1, 1, S)
        elif self.window is None and key_padding is None and (cache is None or T == 1):
            is_causal = cache is None and T > 1  # no mask to build: a plain prefill, or one token seeing every key
        else:
            mask = build_attention_mask(q_pos, k_pos, self.window, key_padding)  # (B|1, 1, T, S)
        y = self.sdpa(q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal,
                      scale=self.scale, enable_gqa=self.n_kv_head != self.n_head)  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)  # re-assemble heads side by side: (B, T, C)
        return self.resid_dropout(self.c_proj(y))


_ACT = {
    "gelu": lambda x: F.gelu(x),  # exact erf GELU (nanoGPT)
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),  # GPT-1's and GPT-2's tanh approximation
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


class MLP(nn.Module):
    """Position-wise feed-forward: Linear(C → 4C), GELU, Linear(4C → C). SwiGLU (Shazeer 2020; Llama):
    c_proj(silu(x W_gate) ⊙ x W_up), ``c_fc`` computing gate and up in one matmul (C → 2H, gate rows first)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.gated = config.mlp == "swiglu"
        hidden = config.mlp_hidden
        self.c_fc = nn.Linear(config.n_embd, 2 * hidden if self.gated else hidden, bias=config.bias)
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
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
    """One Transformer layer: pre-norm (GPT-2/3, Llama) or post-norm (GPT-1). With ``config.causal=False`` it is a
    bidirectional encoder block (ViT, the audio encoder), called as ``block(x)`` or ``block(x, padding=...)``."""

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.pre_ln = config.norm_position == "pre"
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, q_pos: Tensor | None = None, padding: Tensor | None = None,
                cache: Cache | None = None, rope: tuple[Tensor, Tensor] | None = None) -> Tensor:
        if self.pre_ln:  # GPT-2: x + f(LN(x)); the residual stream itself is never normalised
            x = x + self.attn(self.ln_1(x), q_pos, padding, cache, rope)
            return x + self.mlp(self.ln_2(x))
        x = self.ln_1(x + self.attn(x, q_pos, padding, cache, rope))  # GPT-1: LN(x + f(x))
        return self.ln_2(x + self.mlp(x))


@dataclass
class GPTOutput:
    """What the models return; field names follow ``transformers``' ModelOutput classes."""

    last_hidden_state: Tensor  # (B, T, C) after ln_f when the model has one
    logits: Tensor | None = None  # (B, T, V) for the LM, (B, num_labels) for classification
    loss: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None  # embeddings + each block's output, when asked
    past_key_values: list[Cache] | None = None


class GPTModel(nn.Module):
    """Token + learned position embeddings (or rotary ones, inside attention), ``n_layer`` blocks, final norm."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        # Llama has no wpe: RoPE's angles are computed per forward (no buffer for meta-device or dtype casts to touch).
        self.wpe = nn.Embedding(config.block_size, config.n_embd) if config.position_embedding == "learned" else None
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = make_norm(config) if config.final_layer_norm else None

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                position_ids: Tensor | None = None, inputs_embeds: Tensor | None = None,
                past_key_values: list[Cache] | None = None, output_hidden_states: bool = False) -> GPTOutput:
        """input_ids (B, T), or inputs_embeds (B, T, C), at positions after the ``past_key_values[i].pos`` cached ones.
        attention_mask (B, cached + T), 1 = real token: pass it only when it marks padding (None takes the faster
        unmasked path). position_ids (B|1, T): default cached..cached + T - 1 (left-padded batches pass their own)."""
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, C)
        T = x.shape[1]
        past = past_key_values[0].pos if past_key_values else 0
        q_pos = torch.arange(past, past + T, device=x.device)  # absolute slots in the sequence (for the mask)
        if position_ids is None:
            position_ids = q_pos[None]  # (1, T)
        rope = None
        if self.wpe is not None:
            x = x + self.wpe(position_ids)  # (B, T, C)
        else:
            rope = rope_cos_sin(position_ids.view(-1, T), self.config.head_size, self.config.rope_theta)
        x = self.drop(x)
        padding = None if attention_mask is None else attention_mask.bool()  # (B, cached + T), True = real token
        hidden: list[Tensor] = []
        for i, block in enumerate(self.h):
            if output_hidden_states:
                hidden.append(x)
            x = block(x, q_pos, padding, past_key_values[i] if past_key_values else None, rope)
        if self.ln_f is not None:
            x = self.ln_f(x)
        return GPTOutput(last_hidden_state=x, hidden_states=(*hidden, x) if output_hidden_states else None,
                         past_key_values=past_key_values)


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
        elif isinstance(module, nn.LayerNorm | nn.RMSNorm):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)


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
                inputs_embeds: Tensor | None = None, past_key_values: list[Cache] | None = None,
                output_hidden_states: bool = False, logits_to_keep: int = 0) -> GPTOutput:
        """Logits (B, T, V); with ``labels`` (B, T) also the mean next-token loss. Labels are shifted inside, as in
        ``transformers``: position t predicts labels[t + 1]; -100 marks positions without a target.
        ``logits_to_keep=k`` computes logits only for the last k positions (generation needs just one)."""
        out = self.transformer(input_ids, attention_mask, position_ids, inputs_embeds, past_key_values,
                               output_hidden_states)
        out.logits = self.lm_head(out.last_hidden_state[:, -logits_to_keep:])  # (B, T or k, V); -0: every position
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
    """GPT backbone + a linear ``score`` on the last real token (HF: GPT2ForSequenceClassification): at
    ``sequence_lengths - 1`` when given (causal attention never lets a real token see the padding after it), else the
    last one ``attention_mask`` marks, else the last non-``pad_token_id``, else the last position. One label →
    regression (MSE), more → cross-entropy."""

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
