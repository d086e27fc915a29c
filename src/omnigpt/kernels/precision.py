"""Which compute dtype this device runs fast: ``dtype: auto`` resolved by what the hardware does.

bf16 halves the bytes every matmul reads and, where the silicon multiplies bf16 itself, runs several times faster
than fp32: CUDA GPUs with bf16 (Ampere and later), and x86 CPUs with AVX512_BF16 or AMX (oneDNN's bf16 GEMMs,
PyTorch's AVX-512 kernels). Elsewhere — an AVX2-only CPU, like most laptops — bf16 is *emulated*: every op
converts to fp32 and back, and bf16 autocast runs ~12× slower than plain fp32 (measured on an AVX2 AMD EPYC; the
demo's 600 steps became 51). So ``auto`` is bf16 only where it is native, fp32 everywhere else.

The decision uses PyTorch's own capability queries, never a table of CPU names:
- ``torch.backends.cpu.get_cpu_capability()`` — the vector ISA ATen dispatches to (``ATEN_CPU_CAPABILITY=avx2``
  lowers it, and then bf16 is emulated even on a CPU that has AVX512_BF16, so we follow it);
- ``torch.cpu._is_avx512_bf16_supported()`` / ``_is_amx_tile_supported()`` — the bf16 instructions themselves;
- ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` — whether oneDNN will run bf16 GEMMs natively.

An explicit ``bfloat16`` on a CPU without native bf16 still runs (a user may want bf16 numerics) but warns once
per process with the slowdown measured on the spot (a 256×256 matmul in both dtypes, a few milliseconds).
"""

from __future__ import annotations

import functools
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = ("auto", "bfloat16", "float32")


@dataclass(frozen=True)
class Precision:
    """A resolved compute dtype and why: what the run prints at start and saves in ``recipe.json`` / reports."""

    dtype: torch.dtype  # the autocast dtype (float32: autocast off)
    requested: str  # auto | bfloat16 | float32
    reason: str  # one line: what the hardware does and why this dtype follows

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def autocast(self) -> torch.dtype | None:
        """The dtype to autocast to, None for plain fp32."""
        return None if self.dtype == torch.float32 else self.dtype

    def as_dict(self) -> dict[str, str]:
        return {"dtype": self.name, "requested": self.requested, "reason": self.reason, "device": device_name()}


@functools.cache
def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), for reports: a benchmark figure means little without it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str = "cpu") -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_name()} ({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"


@functools.cache
def _cpu_bf16() -> tuple[bool, str]:
    cap = torch.backends.cpu.get_cpu_capability()  # "AVX2", "AVX512", "DEFAULT", ... ("VSX"/"ZVECTOR" off x86)
    amx = bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())
    avx512_bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if cap != "AVX512":
        return False, f"CPU kernels dispatch to {cap}: no native bf16, it would be emulated (~10x slower than fp32)"
    if not (amx or avx512_bf16) or not onednn:
        return False, "CPU has AVX-512 but neither AVX512_BF16 nor AMX: bf16 would be emulated"
    return True, "CPU computes bf16 natively (" + " + ".join(n for n, ok in (("AMX", amx),
                                                                            ("AVX512_BF16", avx512_bf16)) if ok) + ")"


def native_bf16(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """(whether ``device`` computes bf16 natively and faster than fp32, the reason in words)."""
    device = torch.device(device)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{torch.cuda.get_device_name(device)} computes bf16 natively"
        return False, f"{torch.cuda.get_device_name(device)} has no native bf16"
    if device.type != "cpu":
        return False, f"{device.type}: bf16 support unknown, fp32 is the safe choice"
    return _cpu_bf16()


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` (n × n) @ (n × n) matmuls in ``dtype`` on the CPU, measured now."""
    a = torch.randn(n, n).to(dtype)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def copy_bandwidth(mb: int = 256, repeats: int = 5) -> float:
    """Bytes/s read + written by the best of ``repeats`` copies of an ``mb``-MiB fp32 buffer, measured now."""
    src = torch.empty(mb * 2**18)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best


@functools.cache
def machine() -> dict[str, object]:
    """The CPU, its vector ISA, threads and peaks measured once per process (~0.5 s): what every benchmark, demo
    report and ``run.json`` prints beside its figures, so a number always comes with the machine that made it."""
    native, why = native_bf16("cpu")
    out: dict[str, object] = {"cpu": cpu_name(), "capability": torch.backends.cpu.get_cpu_capability(),
                              "threads": torch.get_num_threads(), "native_bf16": native,
                              "fp32_gflops": round(matmul_peak(torch.float32) / 1e9, 1),
                              "copy_gbps": round(copy_bandwidth() / 1e9, 1)}
    if native:  # emulated bf16 would take seconds to measure and say nothing useful
        out["bf16_gflops"] = round(matmul_peak(torch.bfloat16) / 1e9, 1)
    return out


def describe_machine() -> str:
    """One line: CPU (ISA, threads): fp32 X GFLOP/s, bf16 Y GFLOP/s, copy Z GB/s (measured now)."""
    m = machine()
    bf16 = f", bf16 {m['bf16_gflops']:.0f}" if "bf16_gflops" in m else ", bf16 emulated"
    return (f"{m['cpu']} ({m['capability']}, {m['threads']} threads): matmul fp32 {m['fp32_gflops']:.0f}{bf16} "
            f"GFLOP/s, copy {m['copy_gbps']:.0f} GB/s (measured in this run)")


def resolve_dtype(requested: str | None, device: torch.device | str = "cpu") -> Precision:
    """``auto`` → bf16 where native (``native_bf16``), fp32 elsewhere; an explicit dtype is kept, with a one-time
    warning when it is bf16 on a device that emulates it. ``None`` means ``auto``."""
    requested = requested or "auto"
    if requested not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {requested!r}")
    native, why = native_bf16(device)
    if requested == "auto":
        return Precision(torch.bfloat16 if native else torch.float32, "auto", why)
    if requested == "float32":
        return Precision(torch.float32, requested, "float32 requested")
    if not native:
        _warn_emulated(why, torch.device(device).type)
    return Precision(torch.bfloat16, requested, f"bfloat16 requested; {why}")


@functools.cache
def measured_bf16_slowdown(n: int = 256) -> float:
    """How many times slower an (n × n) @ (n × n) matmul runs in bf16 than in fp32 on this CPU, right now."""
    return matmul_peak(torch.float32, n) / matmul_peak(torch.bfloat16, n)


def weights_dtype(requested: str | None, device: torch.device | str = "cpu") -> torch.dtype:
    """The dtype to *store* an inference model's weights in: ``auto`` is bf16 only on a GPU with native bf16. On a
    CPU batch-1 decoding is memory-bound and int4/int8 are the fast path, while bf16 weights cost real models their
    answers (SmolLM2-135M greedy in bf16: "L'Étoile, la Marseillaise…" for the capital of France), so auto keeps
    fp32 there; an explicit dtype is honoured (with ``resolve_dtype``'s warning where bf16 is emulated)."""
    device = torch.device(device)
    if (requested or "auto") == "auto" and device.type == "cpu":
        return torch.float32
    return resolve_dtype(requested, device).dtype


def autocast(device: torch.device | str = "cpu", requested: str | None = "auto") -> torch.autocast:
    """Autocast to the resolved dtype (disabled when that is fp32): evaluation and inference outside the trainer."""
    device = torch.device(device)
    p = resolve_dtype(requested, device)
    return torch.autocast(device.type, dtype=p.dtype, enabled=p.autocast is not None)


@functools.cache
def _warn_emulated(why: str, device_type: str) -> None:
    slow = f" (measured here: bf16 matmul {measured_bf16_slowdown():.0f}x slower than fp32)" \
        if device_type == "cpu" else ""
    warnings.warn(f"dtype bfloat16 requested but {why}{slow}; dtype auto (or float32) runs faster here",
                  RuntimeWarning, stacklevel=3)


__all__ = ["DTYPES", "Precision", "autocast", "copy_bandwidth", "cpu_name", "describe_machine", "device_name",
           "machine", "matmul_peak", "measured_bf16_slowdown", "native_bf16", "resolve_dtype",
           "weights_dtype"]
