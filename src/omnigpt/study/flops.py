"""Training compute counted from the shapes, a power-law fit of loss against it, and seed-spread comparisons.

FLOPs (Kaplan et al. 2020, §2.1, with the attention term counted exactly for causal and banded layers):

    C = 6·N·D + 12·D·d_attn·Σ_l k̄_l

* ``N`` — the parameters that take part in a matrix multiply per token: per layer the fused QKV projection
  (C × (C + 2·n_kv·hs)), the output projection (C × C), the MLP (C × H and H × C, SwiGLU's C × 2H), plus the LM
  head (V × C, counted even when tied to ``wte``: the product happens). Embedding lookups, norms, biases,
  softmax and activations are left out (each < 1% at these shapes, as in Kaplan's table).
* ``6 = 2 × 3``: a multiply-add is 2 FLOPs; the backward pass costs twice the forward.
* ``D`` — tokens trained on: steps × batch × block_size (every position of a window is a target).
* attention: per layer and token the forward pass computes QKᵀ and A·V, 2·d_attn FLOPs per visible key each
  (4·d_attn·k̄ for k̄ keys), times 3 for training. ``k̄_l`` is the mean number of keys a query sees in a window of
  T tokens: (T + 1)/2 for a dense causal layer, (1/T)·Σ_{t=1..T} min(t, W) for a banded layer of width W.
  d_attn = n_head·hs = n_embd (grouped-query attention shares K and V, not the QKᵀ work).

The fit is ordinary least squares of log L = log a − α·log C (no irreducible term: three model sizes over one
decade of compute cannot pin one down), with α's standard error from the residual variance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from omnigpt.config import GPTConfig


def matmul_params(cfg: GPTConfig) -> int:
    """Weights that multiply activations per token: the blocks' projections and the LM head (see module doc)."""
    C, H, L = cfg.n_embd, cfg.mlp_hidden, cfg.n_layer
    qkv = C * (C + 2 * cfg.kv_heads * cfg.head_size)  # c_attn
    proj = C * C  # attn.c_proj
    mlp = C * (2 * H if cfg.mlp == "swiglu" else H) + H * C  # c_fc (gate + up when gated), mlp.c_proj
    return L * (qkv + proj + mlp) + cfg.vocab_size * C  # + lm_head


def mean_keys(T: int, window: int | None) -> float:
    """Mean number of keys a causal query sees over positions 1..T (all earlier ones, or the last ``window``)."""
    if window is None or window >= T:
        return (T + 1) / 2
    W = window
    return (W * (W + 1) / 2 + (T - W) * W) / T  # positions 1..W see t keys, the rest see W


def attention_flops_per_token(cfg: GPTConfig, T: int) -> float:
    """Forward + backward FLOPs of QKᵀ and A·V per trained token, summed over layers: 12·d_attn·Σ_l k̄_l."""
    return 12.0 * cfg.n_embd * sum(mean_keys(T, cfg.layer_window(i)) for i in range(cfg.n_layer))


def training_flops(cfg: GPTConfig, tokens: int, T: int | None = None) -> float:
    """C = 6·N·D + 12·D·d_attn·Σ_l k̄_l for ``tokens`` trained tokens in windows of ``T`` (default block_size)."""
    T = T or cfg.block_size
    return 6.0 * matmul_params(cfg) * tokens + attention_flops_per_token(cfg, T) * tokens


# ------------------------------------------------------------------------------------------------------------
# Fits and comparisons


@dataclass(frozen=True)
class PowerLawFit:
    """L(C) = a·C^(−alpha); ``alpha_se`` the standard error of alpha, ``r2`` of the log-log line, ``n`` points."""

    a: float
    alpha: float
    alpha_se: float
    r2: float
    n: int

    def __call__(self, c: np.ndarray | float) -> np.ndarray | float:
        return self.a * np.power(c, -self.alpha)


def fit_power_law(compute: Sequence[float], loss: Sequence[float]) -> PowerLawFit:
    """Least squares of log L on log C. Needs at least 3 points at 2 or more distinct C (else the error is
    undefined)."""
    x, y = np.log(np.asarray(compute, float)), np.log(np.asarray(loss, float))
    if len(x) < 3 or len(np.unique(x)) < 2:
        raise ValueError(f"a power-law fit needs >= 3 points at >= 2 compute values, got {len(x)}")
    X = np.stack([np.ones_like(x), x], axis=1)  # (n, 2): intercept, slope
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    dof = len(x) - 2
    sigma2 = float(resid @ resid) / dof
    cov = sigma2 * np.linalg.inv(X.T @ X)  # OLS covariance of (log a, slope)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(resid @ resid) / ss_tot if ss_tot > 0 else 1.0
    return PowerLawFit(a=math.exp(coef[0]), alpha=-float(coef[1]), alpha_se=math.sqrt(cov[1, 1]), r2=r2, n=len(x))


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and spread (half the range: max − mean; 0 for one value) of the seeds' values."""
    v = np.asarray(values, float)
    return float(v.mean()), float((v.max() - v.min()) / 2)


def compare(name_a: str, a: Sequence[float], name_b: str, b: Sequence[float]) -> str:
    """A plain sentence: does the gap between two families' mean losses exceed the seeds' spread?

    "Exceeds" means the seed ranges do not overlap: every seed of one is below every seed of the other."""
    (ma, sa), (mb, sb) = mean_spread(a), mean_spread(b)
    lo, hi = (name_a, name_b) if ma < mb else (name_b, name_a)
    gap = abs(ma - mb)
    if max(a) < min(b) or max(b) < min(a):
        return f"{lo} beats {hi} by {gap:.3f} nats, more than the seed spread (±{sa:.3f}, ±{sb:.3f}): a real gap."
    return (f"{lo} and {hi} differ by {gap:.3f} nats, within the seed spread (±{sa:.3f}, ±{sb:.3f}): "
            f"not distinguishable at this budget.")


__all__ = ["PowerLawFit", "attention_flops_per_token", "compare", "fit_power_law", "matmul_params", "mean_keys",
           "mean_spread", "training_flops"]
