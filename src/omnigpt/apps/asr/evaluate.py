"""Speech recognition scored on real recordings: the 563 Asterisk prompts (Debian ``asterisk-core-sounds-en-wav``,
8 kHz, one speaker) and the 5 LibriVox clips (Debian ``pocketsphinx-testdata``), decoded greedily with
faster-whisper's rules (``generate.whisper``), corpus WER under every normaliser of ``text.normalize.NORMALIZERS``.

Used by the ``asr-whisper`` task's ``omnigpt eval`` (``apps/asr/task.py``) and ``benchmarks/asr.py``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from omnigpt.apps.common.metrics import word_error_rate
from omnigpt.generate.whisper import (
    SpecialTokens,
    clip_mel,
    greedy_decode,
    load_waveform,
    token_cap,
    transcribe,
    transcript_prompt,
)
from omnigpt.models.whisper import Whisper
from omnigpt.text.normalize import NORMALIZERS, normalize_basic

ASTERISK_SUBSETS = ("", "dictate", "digits", "followme", "letters", "phonetic", "silence")  # all 563 prompts
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def real_recordings(limit: int | None = None) -> dict[str, list[dict[str, str]]]:
    """{"asterisk": the 563 prompts (first ``limit``), "librivox": the 5 clips}: ``{"id", "audio", "text"}``, the
    text as transcribed (Asterisk's raw line: "28.8", "(2 seconds of silence)"), for the normalisers to read."""
    from omnigpt.data.formats import require
    from omnigpt.data.speech_sources import asterisk_prompts

    require(LIBRIVOX / "transcription", "pocketsphinx-testdata")
    libri = []
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        if m := re.match(r"<s>(.*)</s> \((.*)\)", line.strip()):
            libri.append({"id": f"librivox/{m.group(2)}", "audio": str(LIBRIVOX / f"{m.group(2)}.wav"),
                          "text": m.group(1).strip()})
    asterisk = [{**r, "text": r["raw"]} for r in asterisk_prompts(ASTERISK_SUBSETS)[:limit]]
    return {"asterisk": asterisk, "librivox": libri}


@torch.no_grad()
def transcribe_window(model: Whisper, tokenizer: Any, features: Tensor) -> str:
    """``generate.whisper.transcribe`` (greedy, English, no timestamps) of a clip under 30 s, given its encoder
    output (1, 1500, C): the same prompt, token cap, suppressed tokens and no-speech rule, so the same text."""
    cfg = model.config
    specials = SpecialTokens.from_tokenizer(tokenizer, cfg.lang_ids if cfg.is_multilingual else ())
    prompt = transcript_prompt(specials, cfg.is_multilingual)
    result = greedy_decode(model, features, prompt, specials, sorted(set(cfg.suppress_ids)), cfg.suppress_ids_begin,
                           token_cap(model, len(prompt)))
    if result.no_speech_prob > 0.6 and not result.avg_logprob > -1.0:
        return ""  # silence: transcribe keeps no segment
    return tokenizer.decode([t for t in result.tokens if t < specials.eot])


def _same_encoder(a: Whisper, b: Whisper) -> bool:
    sa, sb = a.encoder.state_dict(), b.encoder.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def wer_report(hyps: dict[str, list[str]], refs: dict[str, list[str]]) -> dict[str, Any]:
    """Per set and pooled: corpus WER (``train.metrics.word_error_rate`` on pre-normalised text, equal to jiwer's)
    under every normaliser of ``NORMALIZERS``; ``wer`` = the ``english`` normaliser's pooled figure."""
    out: dict[str, Any] = {"sets": {}}
    pooled_h, pooled_r = [], []
    for name in hyps:
        row: dict[str, Any] = {"n": len(refs[name])}
        for norm_name, norm in NORMALIZERS.items():
            r = [norm(x) for x in refs[name]]
            row[f"wer_{norm_name}"] = round(word_error_rate([norm(x) for x in hyps[name]], r, normalize=False), 5)
        row["words"] = sum(len(normalize_basic(x).split()) for x in refs[name])
        out["sets"][name] = row
        pooled_h += hyps[name]
        pooled_r += refs[name]
    for norm_name, norm in NORMALIZERS.items():
        out[f"wer_{norm_name}"] = round(word_error_rate([norm(x) for x in pooled_h], [norm(x) for x in pooled_r],
                                                        normalize=False), 5)
    out["wer"] = out["wer_english"]
    return out


def evaluate_models(models: dict[str, tuple[Whisper, Any]], limit: int | None = None,
                    ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Transcribe the real recordings with every model (encoding once for models sharing the first one's encoder):
    (per model: WER report + seconds, per clip rows)."""
    sets = real_recordings(limit)
    names = list(models)
    first = models[names[0]][0]
    shared = {n: _same_encoder(first, m) for n, (m, _) in models.items()}
    hyps: dict[str, dict[str, list[str]]] = {n: {s: [] for s in sets} for n in names}
    seconds = dict.fromkeys(names, 0.0)
    rows = []
    for set_name, records in sets.items():
        for r in records:
            wave = load_waveform(r["audio"])
            long = wave.numel() >= 30 * 16000  # more than one window: transcribe it whole, model by model
            t0 = time.perf_counter()
            if not long:
                with torch.no_grad():
                    base = first.encode(clip_mel(wave)[None])  # (1, 1500, C)
            t_enc = time.perf_counter() - t0
            row = {"set": set_name, "id": r["id"], "ref": r["text"]}
            for n, (m, tok) in models.items():
                t0 = time.perf_counter()
                if long:
                    text = transcribe(m, tok, wave).text
                else:
                    with torch.no_grad():
                        feats = base if shared[n] else m.encode(clip_mel(wave)[None])
                    text = transcribe_window(m, tok, feats)
                row[n] = text = text.strip()
                seconds[n] += time.perf_counter() - t0 + t_enc
                hyps[n][set_name].append(text)
            rows.append(row)
    refs = {s: [r["text"] for r in recs] for s, recs in sets.items()}
    reports = {n: {**wer_report(hyps[n], refs), "seconds": round(seconds[n], 1)} for n in names}
    return reports, rows


__all__ = ["ASTERISK_SUBSETS", "LIBRIVOX", "evaluate_models", "real_recordings", "transcribe_window", "wer_report"]
