"""Causal flash attention on CPU whose backward pass runs in fp32 (training under bf16 autocast).

PyTorch's CPU flash-attention backward is slower in bf16 than in fp32 (GPT-2 small, 4 × 12 heads × 256 tokens on
2 cores: about 35 ms against 25 ms per layer), so the forward keeps the bf16 kernel (half the time of fp32) and
the backward upcasts q, k, v, out and dout (tiny next to the scores it recomputes) and casts the gradients back.
The forward is the very kernel ``scaled_dot_product_attention`` runs; the gradients are closer to an fp32
reference than the bf16 backward's.

``sdpa_fp32_backward`` takes ``F.scaled_dot_product_attention``'s arguments and runs this kernel where it applies
(causal, unmasked, no dropout, bf16 CPU tensors that need gradients), SDPA itself elsewhere;
``use_fp32_backward_attention(model)`` swaps it in for every attention that calls SDPA through an ``sdpa`` attribute
(``models.gpt.CausalSelfAttention``) — the trainer does so for bf16 CPU runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _FlashAttentionFP32Backward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, True, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse)  # lse (B, nh, T) is fp32 already
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, k, v, out, lse = ctx.saved_tensors
        grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout.float(), q.float(), k.float(), v.float(), out.float(), lse, 0.0, True, scale=ctx.scale)
        return *(g.to(q.dtype) for g in grads), None


def flash_attention_fp32_backward(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal attention of bf16 CPU tensors q, k, v (B, nh, T, hs) → (B, nh, T, hs), backward in fp32."""
    return _FlashAttentionFP32Backward.apply(q, k, v, scale)


def sdpa_fp32_backward(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
                       is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> Tensor:
    """``F.scaled_dot_product_attention`` (same arguments), through ``flash_attention_fp32_backward`` when training
    causally without a mask or dropout on bf16 CPU tensors."""
    if (is_causal and attn_mask is None and dropout_p == 0.0 and q.dtype == torch.bfloat16 and q.device.type == "cpu"
            and torch.is_grad_enabled() and q.requires_grad):
        if enable_gqa:  # the kernel wants one KV head per query head
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        return flash_attention_fp32_backward(q, k, v, q.shape[-1] ** -0.5 if scale is None else scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                          scale=scale, enable_gqa=enable_gqa)


def use_fp32_backward_attention(model: nn.Module) -> nn.Module:
    """Swap ``sdpa_fp32_backward`` in wherever a module of ``model`` calls SDPA as its ``sdpa`` (in place; returns
    ``model``). Attentions on the written-out reference path keep it."""
    for module in model.modules():
        if getattr(module, "sdpa", None) is F.scaled_dot_product_attention:
            module.sdpa = sdpa_fp32_backward
    return model
