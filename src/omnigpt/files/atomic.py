"""Checkpoint primitives: whole directories committed atomically, safetensors with a SHA-256 manifest.

A checkpoint is a directory (config.json + model.safetensors + tokenizer files [+ trainer_state/]). Writing it
file by file is not enough: a kill between two files leaves a directory that looks complete but mixes two
steps. So every directory is written under a temporary name beside its destination, fsynced, marked complete
with ``COMPLETE`` last, and renamed into place; readers only trust directories that carry the marker or were
not written by omnigpt at all (e.g. a Hugging Face download).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

MARKER = "COMPLETE"
MANIFEST = "manifest.sha256.json"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_directory(dest: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory; on success, fsync it, write a SHA-256 manifest and ``COMPLETE``, rename it
    to ``dest`` (replacing an older ``dest`` if ``overwrite``). On any exception the temporary directory is
    removed and ``dest`` is untouched."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} already exists")
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {str(p.relative_to(tmp)): sha256_file(p) for p in files}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        for p in [*files, tmp / MANIFEST]:
            with open(p, "rb") as f:
                os.fsync(f.fileno())
        (tmp / MARKER).write_text("ok\n")
        _fsync_dir(tmp)
        if dest.exists():  # move the old one aside first so a crash leaves either old or new, never neither
            old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
        _fsync_dir(dest.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_json_object(path: Path, error: type[Exception] = ValueError, missing_hint: str = "") -> dict:
    """A JSON file whose top level is an object; anything else raises ``error`` naming the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: file not found{missing_hint}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object at the top level")
    return data


def verify_manifest(path: str | Path) -> None:
    """Raise ValueError naming the first file whose SHA-256 differs from the manifest (flipped bytes, edits)."""
    path = Path(path)
    mf = path / MANIFEST
    if not mf.exists():
        return  # not written by omnigpt (e.g. a Hugging Face directory): nothing to check against
    for name, digest in read_json_object(mf).items():
        f = path / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not isinstance(digest, str):
            raise ValueError(f"{mf}: entry {name!r} is not a file of the directory with its SHA-256")
        if not f.is_file():
            raise ValueError(f"{f}: listed in {MANIFEST} but missing")
        if sha256_file(f) != digest:
            raise ValueError(f"{f}: SHA-256 does not match {MANIFEST} (file corrupted or modified)")


def is_complete(path: str | Path) -> bool:
    """True for a directory omnigpt committed (marker present). Temporary/partial ones never qualify."""
    return (Path(path) / MARKER).is_file()
