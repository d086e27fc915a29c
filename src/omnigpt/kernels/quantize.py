"""Weight-only int8 and int4 quantization for faster batch-1 decoding on CPU.

Decoding one token at a time is a chain of matrix–vector products whose cost is reading the weights from memory
(fp32 decoding here runs at the machine's memory bandwidth already), so the only way to go faster is to read fewer
bytes:

* int8 (``Int8Linear``): one scale per output row, symmetric absmax — 4× fewer bytes than fp32, error ~1% of a
  product's size. ``torch.ops.aten._weight_int8pack_mm`` multiplies without materialising a float copy.
* int4 (``Int4Linear``): asymmetric, one bf16 scale and zero point per group of ``group_size`` inputs of a row —
  ~7× fewer bytes than fp32 at group 32, error ~8% of a product on Gaussian weights (more than int8: a trade of
  accuracy for speed, the gpt-fast / llama.cpp Q4 recipe). ``torch.ops.aten._weight_int4pack_mm_for_cpu`` packs
  two weights per byte. Its output dimension must be a multiple of 16, so ``quantize(bits=4)`` keeps a layer whose
  width is not (GPT-2's 50,257-row LM head) in int8.

Both kernels take bf16 activations (their fast CPU path; int8's fp32 path is ~10× slower) and return the input's
dtype, so the rest of the model runs as before. For inference only.

References: gpt-fast ``quantize.py`` (WeightOnlyInt8Linear, WeightOnlyInt4Linear, group_quantize_tensor),
torchao's int8/int4 weight-only recipes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class _WeightOnlyLinear(nn.Module):
    """Shared shape handling: (…, in) → (…, out) through a 2-D kernel on bf16 activations, + bias, in x's dtype."""

    in_features: int
    out_features: int
    bias: Tensor | None

    def _matmul(self, x2: Tensor) -> Tensor:  # (N, in) bf16 → (N, out)
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        y = self._matmul(x.reshape(-1, shape[-1]).to(torch.bfloat16))  # (N, out)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)


class Int8Linear(_WeightOnlyLinear):
    """y = x Wᵀ · scale + b with W stored as int8 (out, in) and one float scale per output row."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float().contiguous()  # (out, in); loaded checkpoints may hold transposed views
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,): the row's largest |w| maps to 127
        self.register_buffer("weight", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def _matmul(self, x2: Tensor) -> Tensor:
        return torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


class Int4Linear(_WeightOnlyLinear):
    """y = x Wᵀ + b with W stored as 4-bit codes q ∈ [0, 15], w ≈ (q − 8)·scale + zero per group of inputs."""

    def __init__(self, linear: nn.Linear, group_size: int = 32) -> None:
        super().__init__()
        out_f, in_f = linear.weight.shape
        if out_f % 16 or in_f % group_size:
            raise ValueError(f"int4 needs out_features % 16 == 0 and in_features % group_size == 0, got "
                             f"({out_f}, {in_f}) with group_size {group_size}")
        w = linear.weight.detach().float().contiguous()
        w = w.reshape(out_f, in_f // group_size, group_size)  # (out, groups, g)
        lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp(min=1e-6)  # the group's range spread over 16 levels
        zero = lo + 8 * scale  # the value of code 8, so w ≈ (q − 8)·scale + zero
        codes = torch.round((w - lo) / scale).clamp(0, 15).to(torch.int32).reshape(out_f, in_f)
        self.register_buffer("weight", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
        # (groups, out, 2): the kernel's layout of scales and zero points
        self.register_buffer("scales_zeros", torch.cat([scale, zero], -1).transpose(0, 1).to(torch.bfloat16)
                             .contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self.in_features, self.out_features, self.group_size = in_f, out_f, group_size

    def _matmul(self, x2: Tensor) -> Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.weight, self.group_size, self.scales_zeros)

    def dequantized(self) -> Tensor:
        """The float weight (out, in) the kernel multiplies by: for tests and error estimates."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        return self._matmul(eye).float().t()

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int4 weights, "
                f"group_size={self.group_size}")


def quantize(model: nn.Module, bits: int = 8, group_size: int = 32) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` (in place; the LM head too, as its own copy when tied to the
    embedding) by ``Int8Linear`` or, with ``bits=4``, ``Int4Linear`` (int8 where the kernel's shape rule excludes
    int4); embeddings and LayerNorms stay in float. Returns the model in eval mode."""
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            int4_ok = child.out_features % 16 == 0 and child.in_features % group_size == 0
            q = Int4Linear(child, group_size) if bits == 4 and int4_ok else Int8Linear(child)
            setattr(module, child_name, q)
    return model.eval()


def quantize_int8(model: nn.Module) -> nn.Module:
    """``quantize(model, bits=8)``."""
    return quantize(model, bits=8)
