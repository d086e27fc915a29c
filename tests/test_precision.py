"""dtype: auto — bf16 only where the hardware computes it natively; an early stop is reported, never hidden."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from test_train import tiny_recipe

from omnigpt.apps import load_recipe
from omnigpt.kernels import precision
from omnigpt.train.report import run_status
from omnigpt.train.trainer import train


@pytest.fixture
def fresh_cache():
    precision._cpu_bf16.cache_clear()
    precision._warn_emulated.cache_clear()
    yield
    precision._cpu_bf16.cache_clear()
    precision._warn_emulated.cache_clear()


def _resolve_in_subprocess(env: dict[str, str], requested: str = "auto") -> dict[str, str]:
    code = ("import json, warnings; warnings.simplefilter('error'); from omnigpt.kernels.precision import "
            f"resolve_dtype; print(json.dumps(resolve_dtype({requested!r}).as_dict()))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=120)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout)


def test_auto_is_fp32_where_torch_dispatches_to_avx2():
    """ATEN_CPU_CAPABILITY=avx2 makes PyTorch run AVX2 kernels, as on a CPU without AVX-512: bf16 is emulated there,
    so auto must pick fp32 (the real capability query, no monkeypatching)."""
    got = _resolve_in_subprocess({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert got["dtype"] == "float32" and "AVX2" in got["reason"], got
    # An explicit bf16 there still runs, but warns (an error under warnings.simplefilter('error')) with the slowdown.
    got = _resolve_in_subprocess({"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}, "bfloat16")
    assert "RuntimeWarning" in got["error"] and "slower than fp32" in got["error"], got


def test_auto_follows_the_capability_queries(monkeypatch, fresh_cache):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    p = precision.resolve_dtype("auto")
    assert p.dtype == torch.float32 and p.autocast is None and "AVX2" in p.reason
    precision._cpu_bf16.cache_clear()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert precision.resolve_dtype("auto").dtype == torch.float32  # AVX-512 without bf16 instructions: emulated
    precision._cpu_bf16.cache_clear()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    p = precision.resolve_dtype("auto")
    assert p.dtype == torch.bfloat16 and p.autocast == torch.bfloat16 and "AVX512_BF16" in p.reason
    assert precision.resolve_dtype("float32").dtype == torch.float32
    with pytest.raises(ValueError, match="dtype: expected one of auto, bfloat16, float32, got 'fp16'"):
        precision.resolve_dtype("fp16")


def test_explicit_bf16_on_an_emulating_cpu_warns_once(monkeypatch, fresh_cache):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    with pytest.warns(RuntimeWarning, match=r"bfloat16 requested but .*AVX2.*slower than fp32"):
        p = precision.resolve_dtype("bfloat16")
    assert p.dtype == torch.bfloat16  # still honoured
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.resolve_dtype("bfloat16")  # once per process


def tiny(tmp_path, **over):
    return load_recipe(None, tiny_recipe(tmp_path, **over))


def test_run_records_its_dtype_and_reason(tmp_path):
    r = tiny(tmp_path, max_steps=2, final_eval=False)
    assert r.dtype == "auto"  # the default
    result = train(r)
    saved = json.loads((tmp_path / "run" / "recipe.json").read_text())
    expected = precision.resolve_dtype("auto")
    assert saved["precision"]["dtype"] == expected.name == result.dtype
    assert saved["precision"]["reason"] == expected.reason and saved["precision"]["device"]
    status = run_status(tmp_path / "run")
    assert status["finished"] and status["stopped_early"] is None and status["steps_done"] == 2


def test_time_guard_stop_is_reported_in_run_json_console_and_eval(tmp_path, capsys):
    from omnigpt.cli.main import main

    result = train(tiny(tmp_path, max_steps=1000, max_minutes=0.0))
    assert result.time_limited and result.step < result.planned_steps == 1000
    out = capsys.readouterr().out
    assert f"STOPPED EARLY: the max_minutes guard (0.0 min) ended the run at step {result.step} of 1000" in out
    status = run_status(tmp_path / "run")
    assert not status["finished"] and "max_minutes" in status["stopped_early"]
    assert main(["eval", str(tmp_path / "run"), "--json"]) == 0
    captured = capsys.readouterr()
    assert "WARNING" in captured.err and "stopped early" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["training"]["steps_done"] == result.step
