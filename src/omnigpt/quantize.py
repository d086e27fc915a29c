"""Weight-only int8 quantization for faster batch-1 decoding on CPU.

Decoding one token at a time is a chain of matrix–vector products whose cost is reading the weights from memory;
storing them as int8 (one scale per output row, symmetric, absmax) reads 4× fewer bytes than fp32, and
``torch.ops.aten._weight_int8pack_mm`` multiplies by them without materialising a float copy. The product is
computed with bf16 activations (the kernel's fast path; its fp32 path is ~10× slower) and returned in the input's
dtype, so the rest of the model runs as before. Accuracy loss is small (per-row absmax over 768–3072 inputs).
For inference only.

References: gpt-fast ``quantize.py`` (WeightOnlyInt8Linear), torchao's int8 weight-only recipe.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Int8Linear(nn.Module):
    """y = x Wᵀ · scale + b with W stored as int8 (out, in) and one float scale per output row."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,): the row's largest |w| maps to 127
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        # The kernel's fast CPU path takes bf16 activations and scales (fp32 input is ~10× slower there).
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])  # (N, in); the kernel wants 2-D input in the scale's dtype (bf16)
        y = torch.ops.aten._weight_int8pack_mm(x2.to(self.scale.dtype), self.weight, self.scale)  # (N, out)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (in place; the LM head too, as its own int8 copy when tied to the
    embedding) by ``Int8Linear``; embeddings and LayerNorms stay in float. Returns the model."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                setattr(module, child_name, Int8Linear(child))
    return model.eval()
