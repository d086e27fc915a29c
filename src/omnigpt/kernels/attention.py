"""Causal flash attention on CPU whose backward pass runs in fp32 (training under bf16 autocast).

PyTorch's CPU flash-attention backward is slower in bf16 than in fp32 (GPT-2 small, 4 × 12 heads × 256 tokens on
2 cores: about 35 ms against 25 ms per layer), so the forward keeps the bf16 kernel (half the time of fp32) and
the backward upcasts q, k, v, out and dout (tiny next to the scores it recomputes) and casts the gradients back.
The forward is the very kernel ``scaled_dot_product_attention`` runs; the gradients are closer to an fp32
reference than the bf16 backward's.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
