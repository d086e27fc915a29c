"""Voice commands (keyword spotting): a vocabulary recorded in the Asterisk prompts, synthetic training clips of it,
the real recordings as the test set, and the clip front end shared by training, evaluation and the pipeline.

Vocabulary ``commands`` (49 words, 53 real test clips; every word is a whole Asterisk prompt whose normalised
transcript is exactly that word — ``real_clips`` finds them in the installed ``asterisk-core-sounds-en-wav``):

* digits ``zero`` … ``nine`` (10 words, 1 clip each: ``digits/0`` … ``digits/9``);
* ``no`` (``vm-no``; the set has no lone "yes" recording, so yes/no is "no" only);
* letters ``a`` … ``z`` (26 words, 1 clip each: ``letters/a`` … ``letters/z``, spoken the US way, "zee");
* command words ``star`` (2: ``digits/star``, ``letters/ascii42``), ``pound``, ``hello``, ``goodbye`` (2:
  ``goodbye``, ``vm-goodbye``), ``record``, ``playback``, ``pause`` (``dictate/…``), ``transfer``
  (``pbx-transfer``), ``enabled``, ``disabled``, ``extension`` (3: ``extension``, ``vm-extension``,
  ``dir-multi3``), ``password`` (``vm-password``) — 12 words, 16 clips.

Left out on purpose: ``oh`` (sounds like the letter o), ``zed`` (a second name of z), ``at``/``for``/``to`` (short
function words that are homophones of other entries or recorded only inside phrases). ``digits`` is a 10-word
subset for quick trials; a recipe may also list its own words (each needs at least one recording).

Training data is synthetic only: ``synthetic_clips`` speaks every word ``per_word`` times with the speaker grid of
``speech_sources.voice_grid`` (espeak-ng accents and variants, flite voices, piper's neural voice, each with its
speed, pitch and a pitch+formant warp), at 8 kHz to match the recordings' telephone channel. It is prepared once
and cached under ``cache_dir()/keywords/<hash of the settings>`` (atomic: written beside, then renamed); the same
settings and seed give the same clips. Validation clips are another draw of the grid (another seed): synthetic
speakers the model did not train on — never the recordings, which only ``omnigpt eval`` reads.

Front end (``read_clips`` → ``clip_features``): a recording (any rate; a path or an array) is resampled to the
model's rate, silence trimmed at both ends (``speech.trim_silence``), cut or zero-padded to the window and turned
into Whisper-scaled log-mels at 100 frames per second (``speech.window_features``), mean-normalised per band for the
from-scratch model. Empty, silent or unreadable input is a ``ProcessorError`` (a ValueError) naming the input.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from omnigpt.data.formats import write_jsonl
from omnigpt.data.speech import FeatureAugment, trim_silence, window_features
from omnigpt.data.speech_sources import ASTERISK_SOUNDS, asterisk_prompts, prepare_synth_speech
from omnigpt.files.assets import cache_dir
from omnigpt.text.processors import ProcessorError, load_audio, resample

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
LETTERS = tuple("abcdefghijklmnopqrstuvwxyz")
COMMAND_WORDS = ("star", "pound", "hello", "goodbye", "record", "playback", "pause", "transfer", "enabled",
                 "disabled", "extension", "password")
VOCABULARIES: dict[str, tuple[str, ...]] = {
    "commands": (*DIGITS, "no", *LETTERS, *COMMAND_WORDS),  # 49 words, 53 recordings
    "digits": DIGITS,  # 10 words, 10 recordings
}
ASTERISK_FOLDERS = ("", "digits", "letters", "dictate")  # where the vocabulary's recordings live
SILENCE_PEAK = 1e-4  # |sample| below this everywhere (−80 dBFS) is a silent recording


def spoken_form(word: str) -> str:
    """The text a synthesiser reads for ``word``: letters upper-case (engines spell them), "Z" as "zee" (British
    espeak-ng voices say "zed", the recordings say "zee")."""
    if word == "z":
        return "zee"
    return word.upper() if len(word) == 1 else word


def vocabulary(words: str | Sequence[str]) -> tuple[str, ...]:
    """A vocabulary name (``VOCABULARIES``) or an explicit word list → the label tuple (order = label ids)."""
    if isinstance(words, str):
        if words not in VOCABULARIES:
            raise ValueError(f"unknown vocabulary {words!r}; known: {', '.join(VOCABULARIES)} (or a list of words)")
        return VOCABULARIES[words]
    out = tuple(words)
    if len(out) < 2 or len(set(out)) != len(out) or not all(isinstance(w, str) and w for w in out):
        raise ValueError(f"a vocabulary needs at least 2 distinct non-empty words, got {list(out)}")
    return out


def spellings(word: str) -> list[str]:
    """How a transcriber may write ``word`` alone: "seven" → "seven", "Seven.", "7", "7." …; "b" → "B", "B.", "B!" …
    (for scoring a closed vocabulary with a speech recogniser)."""
    out = {word, word.capitalize(), word + ".", word.capitalize() + "."}
    if word in DIGITS:
        out |= {str(DIGITS.index(word)), f"{DIGITS.index(word)}."}
    if len(word) == 1:
        out |= {word.upper(), word.upper() + ".", word.upper() + "!"}
    out |= {"star": {"*"}, "pound": {"#"}}.get(word, set())
    return sorted(out)


def real_clips(words: Sequence[str]) -> list[dict[str, Any]]:
    """The Asterisk recordings of ``words``: every prompt whose normalised transcript is exactly one of them, as
    ``{"id", "audio", "label"}`` sorted by label order then id. A word with no recording is an error."""
    index = {w: i for i, w in enumerate(words)}
    found = [{"id": r["id"], "audio": r["audio"], "label": r["text"]}
             for r in asterisk_prompts(ASTERISK_FOLDERS) if r["text"] in index]
    if missing := [w for w in words if not any(r["label"] == w for r in found)]:
        raise ValueError(f"no Asterisk recording of {missing} (the words need whole-prompt recordings; see "
                         f"apps.voice_commands.data.VOCABULARIES)")
    return sorted(found, key=lambda r: (index[r["label"]], r["id"]))


@dataclass(frozen=True)
class SynthSettings:
    """How synthetic clips are drawn (``speech_sources.voice_grid``): engine shares and warp ranges."""

    piper: float = 0.3  # share spoken by piper's neural voice (needs the speech extra)
    flite: float = 0.3  # share spoken by flite; espeak-ng speaks the rest
    warp: dict[str, tuple[float, float]] = field(default_factory=lambda: {
        "piper": (0.95, 1.35), "espeak-ng": (0.9, 1.15), "flite": (0.95, 1.25)})  # pitch+formant factor ranges


def synthetic_clips(words: Sequence[str], per_word: int, seed: int, settings: SynthSettings = SynthSettings(),
                    root: Path | None = None, workers: int = 2) -> list[dict[str, Any]]:
    """``per_word`` synthetic 8 kHz clips of every word, ``{"id", "audio" (absolute), "label", "engine", ...}``,
    prepared on first use and cached under ``root`` (default ``cache_dir()/keywords``) by a hash of the settings."""
    if per_word < 1:
        raise ValueError(f"per_word must be >= 1, got {per_word}")
    spec = {"words": list(words), "per_word": per_word, "seed": seed, "rate": 8000, **asdict(settings)}
    tag = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    out = (root or cache_dir() / "keywords") / f"synth-{tag}"
    if not (out / "clips.jsonl").is_file():
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        spoken = {spoken_form(w): w for w in words}
        meta = prepare_synth_speech(tmp, texts=list(spoken), per_text=per_word, seed=seed, sample_rate=8000,
                                    workers=workers, piper=settings.piper, flite=settings.flite,
                                    warp={k: list(v) for k, v in settings.warp.items()})
        rows = [{**r, "label": spoken[r["spoken"]]} for r in read_jsonl(tmp / "train.jsonl")]
        write_jsonl(tmp / "clips.jsonl", rows)
        (tmp / "meta.json").write_text(json.dumps({**meta, "spec": spec}, indent=1) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return [{**r, "audio": str(out / r["audio"])} for r in read_jsonl(out / "clips.jsonl")]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _name(source: Any, i: int) -> str:
    return str(source) if isinstance(source, str | Path) else f"input {i} (array)"


def read_clips(sources: Sequence[Any], rate: int, seconds: float, sample_rate: int | None = None,
               first_index: int = 0) -> tuple[Tensor, Tensor]:
    """(N, seconds · rate) trimmed waveforms, zero-padded, and their lengths in samples. A source is a path (any
    rate libsndfile reads) or a 1-D array at ``sample_rate`` Hz (default: ``rate``). Empty, silent, non-finite or
    unreadable input raises ``ProcessorError`` naming it (arrays by position, counted from ``first_index``)."""
    size = int(round(seconds * rate))
    waves, lengths = torch.zeros(len(sources), size), torch.zeros(len(sources), dtype=torch.long)
    for i, src in enumerate(sources):
        name = _name(src, first_index + i)
        if isinstance(src, str | Path):
            wave, sr = load_audio(src)  # ProcessorError names the file (missing, empty, not audio, truncated)
        else:
            wave = torch.as_tensor(np.asarray(src, dtype=np.float32))
            sr = sample_rate or rate
            if wave.dim() != 1 or wave.numel() == 0:
                raise ProcessorError(f"{name}: audio must be a non-empty 1-D array, got shape {tuple(wave.shape)}")
        if not torch.isfinite(wave).all():
            raise ProcessorError(f"{name}: audio has non-finite samples")
        if wave.numel() == 0:
            raise ProcessorError(f"{name}: no audio samples")
        if float(wave.abs().max()) < SILENCE_PEAK:
            raise ProcessorError(f"{name}: the recording is silent (peak below -80 dBFS): nothing to classify")
        wave = trim_silence(resample(wave.float(), sr, rate), rate)[:size]
        waves[i, : len(wave)], lengths[i] = wave, len(wave)
    return waves, lengths


def clip_features(waves: Tensor, lengths: Tensor, rate: int, cmn: bool,
                  augment: FeatureAugment | None = None) -> Tensor:
    """Log-mels (N, 80, window frames) of ``read_clips`` windows (``speech.window_features``)."""
    return window_features(waves, lengths, rate=rate, cmn=cmn, augment=augment)


def under_asterisk(path: str | Path) -> bool:
    """Whether ``path`` is one of the installed Asterisk recordings (the test set)."""
    return Path(path).resolve().is_relative_to(ASTERISK_SOUNDS.resolve())


__all__ = ["ASTERISK_FOLDERS", "COMMAND_WORDS", "DIGITS", "LETTERS", "SILENCE_PEAK", "VOCABULARIES", "SynthSettings",
           "clip_features", "read_clips", "real_clips", "spellings", "spoken_form", "synthetic_clips", "under_asterisk",
           "vocabulary"]
