"""Training checkpoints: the model in Hugging Face layout plus ``trainer_state/``, committed as one directory.

    checkpoints/step_000500/
      config.json  model.safetensors  tokenizer files        ← loadable by ``load_pretrained`` / transformers
      trainer_state/state.json                               ← step, counters, recipe (human-readable)
      trainer_state/optimizer.pt  rng.pt                     ← tensors only: loads with ``weights_only=True``
      manifest.sha256.json  COMPLETE                         ← written last by ``atomic_directory``

Why one directory: saving the weights and the optimizer as separate atomic files still lets a SIGKILL fall
between them, and a resume would then mix two steps. ``latest_checkpoint`` only ever returns a
directory that carries ``COMPLETE`` and passes its SHA-256 manifest. RNG states (torch CPU/CUDA, Python,
NumPy) are stored as tensors, never as pickled NumPy objects, so nothing here needs ``weights_only=False``.
Reference: HF Trainer's ``checkpoint-N/`` (and its ``rng_state.pth`` CVE), torchtitan's checkpointer.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from omnigpt.files.atomic import atomic_directory, is_complete, verify_manifest

STATE_DIR = "trainer_state"
_STEP_DIR = re.compile(r"^step_(\d+)$")


# ------------------------------------------------------------------------------------------------------------
# RNG state as tensors


def rng_state() -> dict[str, torch.Tensor]:
    """Every RNG a training step may touch, as tensors."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": torch.tensor([version, *mt], dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if gauss is None else gauss], dtype=torch.float64),
        "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_extra": torch.tensor([np_pos, np_has_gauss, np_gauss], dtype=torch.float64),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda{i}"] = s
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"].tolist()
    g = float(state["python_gauss"][0])
    random.setstate((int(py[0]), tuple(int(x) for x in py[1:]), None if g != g else g))
    pos, has_gauss, gauss = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    cuda = [state[k] for k in sorted(k for k in state if k.startswith("cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# ------------------------------------------------------------------------------------------------------------
# Model files (HF layout)


def load_model(directory: str | Path) -> nn.Module:
    """The model of a checkpoint directory, whatever its kind (``checkpoints/pretrained.py``)."""
    from omnigpt.checkpoints.pretrained import load_pretrained

    return load_pretrained(directory)


# ------------------------------------------------------------------------------------------------------------
# Whole checkpoints


def save_checkpoint(dest: Path, model: nn.Module, preprocessor: Any, state: dict[str, Any],
                    optimizer: dict[str, Any], rng: list[dict[str, torch.Tensor]],
                    modules: dict[str, torch.Tensor] | None = None) -> Path:
    """Commit one checkpoint directory atomically: the model through the pretrained layer (any kind) plus
    ``trainer_state/``. ``rng`` holds one state per rank (DDP); ``modules`` the weights of training-only modules
    that are not part of the saved model (an auxiliary loss head)."""
    from omnigpt.checkpoints.pretrained import write_pretrained

    with atomic_directory(dest) as tmp:
        write_pretrained(model, tmp, preprocessor)
        sd = tmp / STATE_DIR
        sd.mkdir()
        (sd / "state.json").write_text(json.dumps(state, indent=1, default=str) + "\n")
        torch.save(optimizer, sd / "optimizer.pt")
        torch.save({f"rank{i}": s for i, s in enumerate(rng)}, sd / "rng.pt")
        if modules:
            torch.save(modules, sd / "modules.pt")
    return dest


def load_checkpoint_state(directory: Path) -> dict[str, Any]:
    """trainer_state of a committed checkpoint; every file through ``weights_only=True``."""
    sd = directory / STATE_DIR
    return {
        "state": json.loads((sd / "state.json").read_text()),
        "optimizer": torch.load(sd / "optimizer.pt", weights_only=True, map_location="cpu"),
        "rng": torch.load(sd / "rng.pt", weights_only=True, map_location="cpu"),
        "modules": torch.load(sd / "modules.pt", weights_only=True, map_location="cpu")
        if (sd / "modules.pt").is_file() else {},
    }


def saved_recipe(checkpoint: str | Path) -> dict[str, Any]:
    """The recipe (as saved: a mapping) that trained ``checkpoint``, from its ``trainer_state/state.json``; ``{}`` for
    a model saved outside training (a converted or downloaded directory)."""
    path = Path(checkpoint) / STATE_DIR / "state.json"
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text()).get("recipe") or {})
    except (json.JSONDecodeError, AttributeError) as e:
        raise ValueError(f"{path}: not a readable trainer state: {e}") from None


def step_dirs(root: Path) -> list[tuple[int, Path]]:
    """Committed step_N directories under ``root``, oldest first (temp and half-written ones are ignored)."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and is_complete(p)]
    return sorted(found)


def latest_checkpoint(root: Path) -> Path | None:
    """Newest committed checkpoint that still passes its SHA-256 manifest (a corrupted one is skipped, loudly)."""
    for _, p in reversed(step_dirs(root)):
        try:
            verify_manifest(p)
        except ValueError as e:
            warnings.warn(f"skipping checkpoint {p}: {e}", stacklevel=2)
            continue
        return p
    return None


def resolve_checkpoint(path: str | Path) -> Path:
    """A model directory as given, or, for a run directory, its newest complete checkpoint (``runs/demo`` →
    ``runs/demo/checkpoints/step_N``), so every command takes either."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if (path / "config.json").is_file():
        return path
    ckpt = latest_checkpoint(path / "checkpoints") or latest_checkpoint(path)
    if ckpt is None:
        raise FileNotFoundError(f"{path}: no config.json and no complete checkpoints/step_N inside")
    return ckpt


def prune_checkpoints(root: Path, keep: int) -> None:
    for _, p in step_dirs(root)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(".step_*.tmp-*"):  # leftovers of a writer that was killed mid-commit
        shutil.rmtree(p, ignore_errors=True)
