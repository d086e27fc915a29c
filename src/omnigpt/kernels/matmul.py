"""Planned matmuls: cut a bf16 CPU GEMM into row or column blocks when oneDNN runs the blocks faster.

On this project's CPU (2 cores, AMX) oneDNN's bf16 GEMM speed depends on the problem's shape far more than its
size would suggest. GPT-2 small's training GEMMs (1024 tokens per micro-batch) run anywhere from 250 to 650
GFLOP/s as one call, and several of the slow ones run up to 2× faster as 2–8 calls on row blocks (M) or column
blocks (N) writing into the same output — e.g. the LM head's (1024 × 768) @ (768 × 50,257) in 16k-column blocks,
or ``mlp.c_proj``'s forward in 256-row blocks. Which cut wins is not predictable from the shape (it changes
between forward and backward of the same layer), so ``MatmulPlanner`` measures: the first time it sees a shape
and operand layout it times every cut (``CUTS``) a few times, keeps the fastest, and reuses it from then on —
what ``torch.backends.cudnn.benchmark`` does for convolutions.

Different cuts sum in different orders, so their results differ in the last bits. A run therefore keeps its plan:
the trainer writes it next to the checkpoints and a resumed run loads it, which keeps ``--resume`` bit-exact;
pinning a plan file (or ``matmul_plan: off``) makes separate runs bit-identical too. Only bf16 GEMMs on CPU are
planned (fp32 GEMMs run near the machine's peak whole), and only above ``min_flops`` (small ones are not worth
measuring).

``planned_linear`` is ``F.linear`` with the three GEMMs of its forward and backward planned; ``Linear`` uses it while
a planner is active (``with planned(planner): …``), which the trainer does around each micro-step. The models build
plain ``nn.Linear``s; ``use_planned_linears(model)`` swaps ``Linear`` in (the trainer on bf16 CPU runs, ``generate``
for the decode plan of ``kernels.matvec``), the way ``kernels.quantize`` swaps int8/int4 linears in.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnigpt.kernels.matvec import decode_planner

Cut = tuple[str, int]  # ("M" rows | "N" columns, number of blocks); ("M", 1) is the plain single call
CUTS: tuple[Cut, ...] = (("M", 1), ("M", 2), ("M", 4), ("M", 8), ("N", 2), ("N", 4), ("N", 8))
MIN_FLOPS = 2e8  # smaller GEMMs (e.g. 256 × 768 × 512) run as one call, unmeasured


def _layout(t: Tensor) -> str:
    return "N" if t.stride(-1) == 1 else "T"  # row-major, or a transposed (column-major) view


def run_cut(cut: Cut, a: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """out (m, n) = a (m, k) @ b (k, n), as ``cut`` blocks; each block is written straight into its slice of out
    (column slices are strided; the BLAS call takes the leading dimension, nothing is copied)."""
    axis, pieces = cut
    if pieces == 1:
        return torch.mm(a, b, out=out)
    if axis == "M":
        step = -(-a.shape[0] // pieces)
        for i in range(0, a.shape[0], step):
            torch.mm(a[i : i + step], b, out=out[i : i + step])
    else:
        step = -(-b.shape[1] // pieces)
        for j in range(0, b.shape[1], step):
            torch.mm(a, b[:, j : j + step], out=out[:, j : j + step])
    return out


class MatmulPlanner:
    """Per-shape choice of GEMM cut, measured on first use. ``plans`` maps a key ("m×k×n/layouts/dtype") to a cut
    and is what gets saved (``state_dict``) and pinned (``load``)."""

    def __init__(self, min_flops: float | None = None, repeats: int = 9, plans: dict[str, Cut] | None = None) -> None:
        self.min_flops = MIN_FLOPS if min_flops is None else min_flops
        self.repeats = repeats
        self.plans: dict[str, Cut] = dict(plans or {})
        self.tuned = 0  # shapes measured by this process (the rest came from a loaded plan)

    @staticmethod
    def applies(t: Tensor) -> bool:
        return t.device.type == "cpu" and t.dtype == torch.bfloat16

    def mm(self, a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
        """a (m, k) @ b (k, n) → (m, n) contiguous (``out`` if given), with this shape's fastest cut (measured
        now if the shape is new)."""
        m, k = a.shape
        n = b.shape[1]
        fresh = out is None  # measure as it will run: into a new buffer each time, or into the caller's
        if out is None:
            out = torch.empty(m, n, dtype=a.dtype, device=a.device)
        if 2 * m * k * n < self.min_flops or not self.applies(a):
            return torch.mm(a, b, out=out)
        key = f"{m}x{k}x{n}/{_layout(a)}{_layout(b)}/{str(a.dtype).removeprefix('torch.')}"
        cut = self.plans.get(key)
        if cut is None:
            cut = self.plans[key] = self._measure(a, b, out, fresh)
            self.tuned += 1
        return run_cut(cut, a, b, out)

    def _measure(self, a: Tensor, b: Tensor, out: Tensor, fresh: bool) -> Cut:
        """The cut with the lowest median *relative* time over ``repeats`` rounds. Each round runs every cut once
        and divides by the round's total, which cancels the 2×-wide swings of a shared machine's speed between
        rounds; a cut must beat the single call by 10% to be chosen (ties go to the plain GEMM)."""
        m, n = a.shape[0], b.shape[1]
        cuts = [c for c in CUTS if c[1] == 1 or (m if c[0] == "M" else n) // c[1] >= 64]  # blocks ≥ 64 wide
        rel: dict[Cut, list[float]] = {c: [] for c in cuts}
        for _ in range(self.repeats):
            took = {}
            for c in cuts:
                t0 = time.perf_counter()
                run_cut(c, a, b, torch.empty_like(out) if fresh else out)  # first-touch page faults included
                took[c] = time.perf_counter() - t0
            total = sum(took.values())
            for c in cuts:
                rel[c].append(took[c] / total)
        score = {c: statistics.median(v) for c, v in rel.items()}
        best = min(cuts, key=score.__getitem__)
        return best if score[best] < 0.9 * score[CUTS[0]] else CUTS[0]

    def state_dict(self) -> dict[str, list]:
        return {k: list(v) for k, v in sorted(self.plans.items())}

    def load_state_dict(self, state: dict[str, list]) -> None:
        for key, cut in state.items():
            if not (isinstance(cut, list | tuple) and len(cut) == 2 and tuple(cut) in CUTS):
                raise ValueError(f"matmul plan entry {key!r}: {cut!r} is not one of {[list(c) for c in CUTS]}")
            self.plans[key] = (str(cut[0]), int(cut[1]))

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.state_dict(), indent=1) + "\n")
        tmp.replace(path)  # atomic: a killed run never leaves half a plan

    def load(self, path: str | Path) -> MatmulPlanner:
        try:
            state = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the matmul plan {path}: {e}") from None
        if not isinstance(state, dict):
            raise ValueError(f"matmul plan {path}: expected a JSON object of shape keys → [axis, blocks]")
        self.load_state_dict(state)
        return self


_ACTIVE: MatmulPlanner | None = None


@contextlib.contextmanager
def planned(planner: MatmulPlanner | None) -> Iterator[None]:
    """Within the block, ``Linear`` and the fused LM-head loss plan their bf16 GEMMs with ``planner``
    (None: a no-op). Backward passes use the planner their forward saw, wherever they run."""
    global _ACTIVE
    previous, _ACTIVE = _ACTIVE, planner
    try:
        yield
    finally:
        _ACTIVE = previous


class _PlannedLinear(torch.autograd.Function):
    """y = x Wᵀ + b in bf16, with the forward GEMM and both backward GEMMs planned."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, planner: MatmulPlanner) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)  # (N, in)
        w = weight.to(torch.bfloat16)  # (out, in): the cast autocast would make
        y = planner.mm(x2, w.t())  # (N, out)
        if bias is not None:
            y += bias.to(torch.bfloat16)
        ctx.save_for_backward(x2, w)
        ctx.planner, ctx.has_bias = planner, bias is not None
        ctx.dtypes = x.dtype, weight.dtype
        return y.view(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, dy: Tensor):
        x2, w = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        dy2 = dy.reshape(-1, dy.shape[-1]).to(w.dtype)  # (N, out)
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = ctx.planner.mm(dy2, w).view(*dy.shape[:-1], w.shape[1]).to(x_dtype)  # (N, out) @ (out, in)
        if ctx.needs_input_grad[1]:
            dw = ctx.planner.mm(dy2.t(), x2).to(w_dtype)  # (out, N) @ (N, in)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2.sum(0).to(w_dtype)  # bf16 in, fp32 accumulation inside the reduction (as autocast's addmm)
        return dx, dw, db, None


def planned_linear(x: Tensor, weight: Tensor, bias: Tensor | None, planner: MatmulPlanner) -> Tensor:
    """``F.linear`` under CPU bf16 autocast, its GEMMs planned. Callers check ``planner_for(x)`` first."""
    with torch.autocast("cpu", enabled=False):
        return _PlannedLinear.apply(x, weight, bias, planner)


def planner_for(x: Tensor) -> MatmulPlanner | None:
    """The active planner when x is about to go through a bf16 CPU GEMM with gradients, else None."""
    if _ACTIVE is None or x.device.type != "cpu" or not torch.is_grad_enabled():
        return None
    bf16 = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    return _ACTIVE if bf16 or x.dtype == torch.bfloat16 else None


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state dict) whose bf16 CPU training GEMMs follow the active matmul plan
    (``omnigpt.kernels.matmul``: the trainer measures, per shape, whether oneDNN runs the GEMM faster in blocks), and
    whose one-row products inside ``generate`` follow the decode plan (``omnigpt.kernels.matvec``)."""

    def forward(self, x: Tensor) -> Tensor:
        planner = planner_for(x)
        if planner is not None:
            return planned_linear(x, self.weight, self.bias, planner)
        decoding = decode_planner()  # inside generate(): one-row products through the matvec plan (bit-identical)
        if decoding is not None and x.numel() == self.in_features:
            return decoding.linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def use_planned_linears(model: nn.Module) -> nn.Module:
    """Make every plain ``nn.Linear`` of ``model`` a ``Linear``, in place, and return ``model``. Module replacement by
    class: the same object keeps its parameters (ties included), state dict and hooks, and computes what it did until
    a plan is active. Idempotent; subclasses (``Int8Linear``'s siblings, LoRA layers) are left as they are."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = Linear
    return model
