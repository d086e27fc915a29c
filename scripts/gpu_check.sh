#!/usr/bin/env bash
# GPU checks for omnigpt: device, a bf16 GPT-2-small training step with flash SDPA, batch-1 KV-cache decoding
# (speed and correctness), and a DDP step under torchrun when there are several GPUs (scripts/gpu_check.py).
#
#   scripts/gpu_check.sh               # on a CUDA machine: every part; on a CPU-only one: SKIP lines, exit 0
#   scripts/gpu_check.sh --cpu-smoke   # the same code paths on CPU with tiny-gpt2 sizes
#
# Runs from the checkout (PYTHONPATH=src; `pip install -e .` is not needed) and never downloads anything.
# Exit status: 0 when no part failed, 1 when one did, 124 when the whole run passed GPU_CHECK_TIMEOUT seconds
# (default 240; each part also has its own watchdog inside). PYTHON picks the interpreter (default: the
# checkout's .venv if there is one, else python3).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # nothing outside the machine is reachable there

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader 2>/dev/null \
    | sed 's/^/nvidia-smi: /' || true
else
  echo "nvidia-smi: not found (CPU-only machine?)"
fi

limit="${GPU_CHECK_TIMEOUT:-240}"
timeout --signal=TERM --kill-after=15 "$limit" "$PYTHON" scripts/gpu_check.py "$@"
rc=$?
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
  echo "FAIL gpu_check: stopped after ${limit} s (GPU_CHECK_TIMEOUT); the lines above are the parts that finished"
  exit 124
fi
exit $rc
