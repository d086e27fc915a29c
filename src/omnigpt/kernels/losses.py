"""Fused LM head + cross-entropy: the training loss with one (N, V) buffer instead of four.

For GPT-2 (V = 50,257) the logits of one micro-batch of 4 × 256 tokens are 51 M numbers. The usual path
(``transformers``: ``lm_head`` under autocast, then ``cross_entropy(logits.float())``) writes a bf16 logits tensor,
an fp32 copy, an fp32 log-softmax and, in backward, an fp32 gradient and its bf16 cast: several hundred MB of
memory traffic around one matmul. Here the head's matmul runs once at full size (the efficient shape), then the
softmax work goes row chunk by row chunk in fp32 (small enough to stay in cache), producing the loss and, in the
same pass, the gradient (softmax − one-hot) / count — written back over the logits in the compute dtype. Backward
is then just the two matmuls dL/dh = G·W and dL/dW = Gᵀ·h.

Numerically it is the computation autocast does (bf16 logits, fp32 softmax, bf16 gradient into bf16 matmuls
with fp32 accumulation); the tests compare it with ``F.cross_entropy`` on full logits. Without gradients
(evaluation) the matmul is chunked too, so no (N, V) buffer is held at all.
Reference: Liger-Kernel's FusedLinearCrossEntropy, Apple's Cut Cross-Entropy (Wijmans et al. 2024).
"""
from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor

from omnigpt.kernels import matmul


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype autocast would run the head's matmul in (bf16 under CPU/CUDA autocast), else the input's."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


class _Workspace:
    """Large buffers of the LM head, reused across steps instead of allocated each time.

    Each training micro-step needs the same few ~100 MB tensors (GPT-2: the 1024 × 50,257 bf16 logits, the
    bf16 copy of the 50,257 × 768 head weight, its bf16 gradient). Allocations that size are handed back to the
    OS when freed, so every step used to pay tens of thousands of page faults to touch them again (~0.1 s of a
    3 s CPU step). A buffer is lent either to one autograd graph (returned when the graph is freed: after
    backward, or when it is dropped unused — two live graphs never share one) or for one call (``give_back``).

    Buffers are flat storage, lent as a view of their first ``prod(shape)`` elements, and pooled by dtype and
    device, not by shape: with variable-length batches the logits' shape (B·T, V) changes every step, and a pool
    per shape kept one ~0.5 GB buffer for every length seen (a Qwen2.5 LoRA run on translation batches grew by
    about that much per step, to 21 GB). Now at most ``keep`` buffers per dtype are kept — the largest — so the
    pool is bounded by the largest step, and a request takes the smallest free buffer that holds it."""

    def __init__(self, keep: int = 3) -> None:
        self.free: dict[tuple, list[Tensor]] = {}  # (dtype, device) → flat buffers
        self.keep = keep  # free buffers kept per dtype and device: the head's weight copy, logits, weight gradient

    def take(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, ctx=None) -> Tensor:
        n = math.prod(shape)
        pool = self.free.setdefault((dtype, device), [])  # device: a tensor's (cuda:0, not cuda), as _put keys it
        fits = [i for i, b in enumerate(pool) if b.numel() >= n]
        if fits:
            flat = pool.pop(min(fits, key=lambda i: pool[i].numel()))
        else:
            if len(pool) >= self.keep:  # the new buffer will take the smallest one's place
                pool.pop(self._smallest(pool))
            flat = torch.empty(n, dtype=dtype, device=device)
        if ctx is not None:
            weakref.finalize(ctx, self._put, flat)  # back in the pool when the graph is gone
        return flat[:n].view(shape)  # a view even when n fills it, so give_back finds the flat buffer as ._base

    def give_back(self, buf: Tensor) -> None:
        """Return a buffer lent for one call (``take`` without ``ctx``)."""
        self._put(buf._base if buf._base is not None else buf)

    def _put(self, flat: Tensor) -> None:
        pool = self.free.setdefault((flat.dtype, flat.device), [])
        pool.append(flat)
        if len(pool) > self.keep:
            pool.pop(self._smallest(pool))

    @staticmethod
    def _smallest(pool: list[Tensor]) -> int:
        return min(range(len(pool)), key=lambda i: pool[i].numel())  # by index: ``==`` on tensors is elementwise


_WORKSPACE = _Workspace()


class _FusedLinearCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, chunk: int, dtype: torch.dtype,
                planner: matmul.MatmulPlanner | None = None) -> Tensor:
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        valid = targets != -100
        count = valid.sum().clamp(min=1).to(torch.float32)
        safe_t = torch.where(valid, targets, 0)
        hc = h.to(dtype)  # (N, C) in the compute dtype (bf16 under autocast)
        w = weight.to(dtype) if weight.dtype == dtype or not need_grad else \
            _WORKSPACE.take(weight.shape, dtype, weight.device, ctx).copy_(weight)  # (V, C), cast into a reused buffer
        mm = planner.mm if planner is not None else torch.mm  # planned: the GEMM in measured-fastest blocks
        logits = None
        if need_grad:  # (N, V): one large matmul (the efficient shape) into the reused buffer
            logits = mm(hc, w.t(), out=_WORKSPACE.take((h.shape[0], w.shape[0]), dtype, h.device, ctx))
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        # The softmax work goes row chunk by row chunk in fp32, small enough to stay in cache; the gradient
        # (softmax − one-hot) / count overwrites the logits chunk, so no second (N, V) buffer is ever made.
        for i in range(0, h.shape[0], chunk):
            x = logits[i : i + chunk].float() if need_grad else (hc[i : i + chunk] @ w.t()).float()  # (n, V)
            t, v = safe_t[i : i + chunk], valid[i : i + chunk]
            target_logit = x.gather(1, t[:, None]).squeeze(1)
            m = x.amax(dim=1, keepdim=True)
            x.sub_(m).exp_()
            s = x.sum(dim=1, keepdim=True)
            lse = (m + s.log()).squeeze(1)
            total += ((lse - target_logit) * v).sum()
            if need_grad:
                x.div_(s)  # softmax
                x[torch.arange(len(t), device=x.device), t] -= 1.0
                x.mul_((v.to(x.dtype) / count)[:, None])  # mean over targets; ignored rows contribute 0
                logits[i : i + chunk] = x  # cast back into the compute dtype, in place
        if need_grad:
            ctx.save_for_backward(logits, hc, w)  # logits now hold dCE/dlogits (N, V)
        ctx.dtypes, ctx.mm = (h.dtype, weight.dtype), mm
        return total / count

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad, hc, w = ctx.saved_tensors  # grad: dCE/dlogits (N, V)
        h_dtype, w_dtype = ctx.dtypes
        # grad_out (1 for a plain loss.backward()) scales the small (N, C) operands, not the (N, V) gradient:
        # dL/dh = s·(G·W), dL/dW = Gᵀ·(s·h) — a 100 MB pass over G saved.
        s = grad_out.to(grad.dtype)
        gh = ctx.mm(grad, w).mul_(s).to(h_dtype) if ctx.needs_input_grad[0] else None  # (N, V) @ (V, C)
        gw = None
        if ctx.needs_input_grad[1]:  # (V, N) @ (N, C); the compute-dtype product lives only until its cast
            if w.dtype == w_dtype:
                gw = ctx.mm(grad.t(), hc * s)
            else:
                tmp = ctx.mm(grad.t(), hc * s, out=_WORKSPACE.take(w.shape, w.dtype, w.device))
                gw = tmp.to(w_dtype)
                _WORKSPACE.give_back(tmp)
        return gh, gw, None, None, None, None


@torch.compiler.disable  # a hand-written autograd.Function over a reused workspace: eager inside a compiled model
def fused_linear_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor, chunk: int | None = None) -> Tensor:
    """Mean cross-entropy of ``h @ weight.T`` against ``targets``, -100 ignored.

    h: (..., C) hidden states, weight: (V, C) the LM head (tied ``wte`` is fine), targets: (...) token ids —
    already aligned with h (no shift here). Under autocast the matmuls run in the autocast dtype."""
    C, V = h.shape[-1], weight.shape[0]
    if chunk is None:  # rows per softmax chunk: about 1 MiB of fp32 logits, at least 8 rows
        chunk = max(8, (1 << 18) // V)
    h2, t = h.reshape(-1, C), targets.reshape(-1)
    if not (torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)):
        # Evaluation: chunk the matmul as well (256+ rows keeps it efficient), so no (N, V) buffer exists at all.
        return _FusedLinearCE.forward(_NoGrad, h2, weight, t, max(chunk, 256), _compute_dtype(h))
    return _FusedLinearCE.apply(h2, weight, t, chunk, _compute_dtype(h), matmul.planner_for(h))


class _NoGrad:
    """Stands in for autograd's ctx when the forward is called directly (no gradient wanted)."""

    needs_input_grad = (False, False, False, False, False, False)


def reference_cross_entropy(h: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
    """The unfused computation (full logits), for tests and as the definition."""
    logits = F.linear(h, weight).float()
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
