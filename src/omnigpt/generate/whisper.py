"""Whisper decoding: prompts, suppressed tokens, greedy and beam search, 30-second windows, language detection.

``transcribe(model, tokenizer, audio)`` follows faster-whisper 1.2.1 (``WhisperModel.transcribe`` with
``without_timestamps=True``, one temperature) on top of CTranslate2 4.8's search, so that, given the same 16 kHz
waveform, it returns the same token ids:

* Features: Whisper's log-mel (``text.processors.log_mel_spectrogram``) of the audio with 160 zero samples
  appended; the last frame is dropped (``content_frames``). The whole recording shares one floor (max − 8).
* Windows: 3000 frames (30 s) from ``seek``; a short last window is zero-padded in feature space (OpenAI's and
  faster-whisper's ``pad_or_trim`` on the log-mel, not log-mel of silence); ``seek`` advances by the window.
* Prompt: [``<|startofprev|>`` + up to 223 previous text tokens, when conditioning on previous text] +
  ``<|startoftranscript|>`` [+ language + task for multilingual models] + ``<|notimestamps|>``.
* Suppressed tokens: the checkpoint's ``suppress_ids`` (non-speech symbols and the task/special tokens; equal to
  faster-whisper's list for suppress_tokens=[-1]) at every step, ``suppress_ids_begin`` (space, end-of-text) at the
  first step. At most min(224, 448 − (prompt − 1)) tokens per window (CTranslate2's ``max_length`` rule).
* Greedy = argmax; beam search = CTranslate2's: 2·beam candidates per step, a candidate ending in
  ``<|endoftext|>`` is set aside and its slot goes to the next unfinished candidate, stop once beam×patience
  hypotheses are finished, rank by sum of log-probs / length^length_penalty.
* No-speech skip: a window whose P(``<|nospeech|>``) at the start-of-transcript position exceeds 0.6 and whose
  average log-prob is below -1 yields nothing (faster-whisper's defaults).
* Multilingual models detect the language once, on the first window (softmax over the language tokens after
  ``<|startoftranscript|>``), unless ``language`` is given.

Left out (deliberately): timestamp tokens and their rules, word timestamps, temperature fallback (sampling), VAD.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from omnigpt.data.speech import add_noise
from omnigpt.models.whisper import DecoderState, Whisper
from omnigpt.text.processors import load_audio, log_mel_spectrogram, resample

SAMPLE_RATE = 16000
HOP = 160
WINDOW_FRAMES = 3000  # 30 s of 10 ms frames


# ------------------------------------------------------------------------------------------------------------
# Special tokens


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of Whisper's special tokens in one tokenizer (they shift by one between English-only and multilingual)."""

    eot: int
    sot: int
    sot_prev: int
    sot_lm: int
    no_speech: int
    no_timestamps: int
    transcribe: int
    translate: int
    languages: dict[str, int] = field(default_factory=dict)  # "en" → id of <|en|>

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, lang_ids: Sequence[int] = ()) -> SpecialTokens:
        def tid(*names: str) -> int:
            for name in names:
                if (i := tokenizer.token_to_id(name)) is not None:
                    return int(i)
            raise ValueError(f"the tokenizer has no {' / '.join(names)} token (not a Whisper tokenizer?)")

        languages = {tokenizer.id_to_token(i)[2:-2]: int(i) for i in lang_ids}
        return cls(eot=tid("<|endoftext|>"), sot=tid("<|startoftranscript|>"), sot_prev=tid("<|startofprev|>"),
                   sot_lm=tid("<|startoflm|>"), no_speech=tid("<|nospeech|>", "<|nocaptions|>"),
                   no_timestamps=tid("<|notimestamps|>"), transcribe=tid("<|transcribe|>"),
                   translate=tid("<|translate|>"), languages=languages)


# ------------------------------------------------------------------------------------------------------------
# Features


def load_waveform(audio: str | Path | np.ndarray | Tensor, sample_rate: int | None = None) -> Tensor:
    """A 16 kHz mono float waveform (N,) from a file (any rate; resampled) or an array (16 kHz unless told)."""
    if isinstance(audio, str | Path):
        wave, sr = load_audio(audio)
    else:
        wave = torch.as_tensor(np.asarray(audio, dtype=np.float32) if isinstance(audio, np.ndarray) else audio)
        sr = sample_rate or SAMPLE_RATE
        if wave.dim() != 1 or wave.numel() == 0 or not torch.isfinite(wave).all():
            raise ValueError(f"audio must be a non-empty 1-D array of finite samples, got shape {tuple(wave.shape)}")
    return resample(wave.float(), sr, SAMPLE_RATE)


def log_mel(wave: Tensor, n_mels: int = 80) -> Tensor:
    """Whole-recording log-mel (n_mels, content_frames + 1) the way faster-whisper frames it: 160 zeros
    appended, so the last frame is padding (callers read ``content_frames = frames - 1``)."""
    return log_mel_spectrogram(F.pad(wave.float(), (0, HOP)), n_mels=n_mels)


def pad_or_trim(mel: Tensor, frames: int = WINDOW_FRAMES) -> Tensor:
    """(n_mels, T) → (n_mels, frames): zero-padded (in log-mel space) or cut."""
    return F.pad(mel[:, :frames], (0, max(0, frames - mel.shape[1])))


# ------------------------------------------------------------------------------------------------------------
# Search


@dataclass
class DecodeResult:
    """One window's decoded text tokens (no specials), their summed log-prob (end-of-text included) and the
    probability of ``<|nospeech|>`` at the start-of-transcript position."""

    tokens: list[int]
    sum_logprob: float
    no_speech_prob: float

    @property
    def avg_logprob(self) -> float:
        return self.sum_logprob / (len(self.tokens) + 1)  # faster-whisper's average (end-of-text counted)


def _mask(logits: Tensor, suppress: Tensor, suppress_begin: Tensor, step: int) -> Tensor:
    logits = logits.float()
    logits[:, suppress] = -math.inf
    if step == 0:
        logits[:, suppress_begin] = -math.inf  # no blank or empty transcript as the first token
    return logits


def _prefill(model: Whisper, audio_features: Tensor, prompt: Sequence[int],
             sot_index: int) -> tuple[DecoderState, Tensor, Tensor]:
    """Run the prompt: (state, next-token logits (1, V), P(no speech) at the start-of-transcript position)."""
    state = model.new_state(audio_features)
    logits = model.decode(torch.tensor([list(prompt)], device=audio_features.device), state)  # (1, L, V)
    no_speech = torch.softmax(logits[0, sot_index].float(), -1)
    return state, logits[:, -1], no_speech


def token_cap(model: Whisper, prompt_len: int, limit: int | None = None) -> int:
    """CTranslate2's cap min(total / 2, total − (prompt − 1)), total = n_text_ctx, or prompt + ``limit`` when
    given (faster-whisper's ``max_new_tokens``)."""
    total = model.config.n_text_ctx if limit is None else min(prompt_len + limit, model.config.n_text_ctx)
    return min(total // 2, total - (prompt_len - 1))


def transcript_prompt(specials: SpecialTokens, multilingual: bool) -> list[int]:
    """Whisper's start of a transcript without timestamps (what ``transcribe`` feeds before the first text token)."""
    lang = [specials.languages["en"], specials.transcribe] if multilingual else []
    return [specials.sot, *lang, specials.no_timestamps]


def clip_mel(audio: str | Path | Tensor, n_mels: int = 80, noise: tuple[float, float, int] | None = None) -> Tensor:
    """(n_mels, 3000): the window ``transcribe`` gives the model for a clip under 30 s (log-mel with 160 zeros
    appended, last frame dropped, zero-padded). ``noise`` = (low dB, high dB, seed): white noise under the peak."""
    wave = load_waveform(audio)  # a missing, empty or corrupt file raises, naming it
    if not bool(wave.any()):
        raise ValueError(f"{audio if isinstance(audio, str | Path) else 'waveform'}: silent clip (every sample is 0)")
    if noise is not None:
        gen = torch.Generator().manual_seed(noise[2])
        wave = add_noise(wave[None], torch.tensor([wave.numel()]), gen, noise[0], noise[1])[0]
    mel = log_mel(wave, n_mels)
    if mel.shape[1] - 1 > WINDOW_FRAMES:
        raise ValueError(f"{audio}: longer than 30 s; training clips must fit one window")
    return pad_or_trim(mel[:, :-1])


def decoder_logits(model: Whisper, audio_features: Tensor, tokens: Tensor) -> Tensor:
    """Teacher-forced logits (B, T, V) of ``tokens`` (B, T) given encoder output (B, S, C), or (1, S, C) shared by
    every row (its keys and values projected once): the decoder of ``models.whisper`` without its KV cache (plain
    causal self-attention), so the whole sequence backpropagates."""
    dec, B = model.decoder, tokens.shape[0]
    q_pos = torch.arange(tokens.shape[1], device=tokens.device)  # (T,)
    x = dec.wte(tokens) + dec.wpe(q_pos)[None]  # (B, T, C)
    for block in dec.h:
        k, v = block.xattn.project_kv(audio_features)  # (B or 1, nh, S, hs) each
        x = block(x, q_pos, None, (k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)))
    return F.linear(dec.ln_f(x), dec.wte.weight)  # (B, T, V): the tied output projection


@torch.no_grad()
def transcript_logprobs(model: Whisper, audio_features: Tensor, prompt: Sequence[int],
                        candidates: Sequence[Sequence[int]], eot: int) -> Tensor:
    """log P(candidate + <|endoftext|> | audio, prompt) for each candidate token list (K,): decoding constrained to
    a closed vocabulary. ``audio_features`` is one clip's encoder output (1, S, C), shared by the K teacher-forced
    sequences."""
    L = len(prompt)
    seqs = [[*prompt, *c, eot] for c in candidates]
    T = max(map(len, seqs))
    tokens = torch.full((len(seqs), T), eot, device=audio_features.device)  # (K, T), padded with eot
    for k, seq in enumerate(seqs):
        tokens[k, : len(seq)] = torch.tensor(seq)
    logp = decoder_logits(model, audio_features, tokens[:, :-1]).float().log_softmax(-1)  # (K, T - 1, V)
    picked = logp[:, L - 1 :].gather(-1, tokens[:, L:, None])[..., 0]  # (K, T - L): each next token
    scored = torch.arange(L, T, device=tokens.device)[None] < torch.tensor([len(q) for q in seqs])[:, None]
    return (picked * scored).sum(-1)


@torch.no_grad()
def greedy_decode(model: Whisper, audio_features: Tensor, prompt: Sequence[int], specials: SpecialTokens,
                  suppress: Sequence[int], suppress_begin: Sequence[int],
                  max_length: int | None = None) -> DecodeResult:
    """Argmax decoding of one window (audio_features (1, S, C)) after ``prompt``."""
    state, logits, p_ns = _prefill(model, audio_features, prompt, list(prompt).index(specials.sot))
    max_length = max_length or token_cap(model, len(prompt))
    sup, sup0 = torch.tensor(list(suppress), dtype=torch.long), torch.tensor(list(suppress_begin), dtype=torch.long)
    tokens: list[int] = []
    total = 0.0
    for step in range(max_length):
        logp = torch.log_softmax(_mask(logits, sup, sup0, step), dim=-1)  # (1, V)
        best = int(logp[0].argmax())
        total += float(logp[0, best])
        if best == specials.eot:
            break
        tokens.append(best)
        if step + 1 == max_length:
            break
        logits = model.decode(torch.tensor([[best]], device=audio_features.device), state)[:, -1]
    return DecodeResult(tokens, total, float(p_ns[specials.no_speech]))


@torch.no_grad()
def beam_decode(model: Whisper, audio_features: Tensor, prompt: Sequence[int], specials: SpecialTokens,
                suppress: Sequence[int], suppress_begin: Sequence[int], beam_size: int = 5, patience: float = 1.0,
                length_penalty: float = 1.0, max_length: int | None = None) -> DecodeResult:
    """CTranslate2's beam search over one window (audio_features (1, S, C)); returns the best hypothesis."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    state, logits, p_ns = _prefill(model, audio_features, prompt, list(prompt).index(specials.sot))
    max_length = max_length or token_cap(model, len(prompt))
    sup, sup0 = torch.tensor(list(suppress), dtype=torch.long), torch.tensor(list(suppress_begin), dtype=torch.long)
    K, n_cand = beam_size, 2 * beam_size  # twice the beam: finished candidates leave room for live ones
    max_candidates = round(K * patience)
    early_exit = length_penalty == 0  # without a length penalty the first finished top beam is final
    alive = torch.zeros(1, 0, dtype=torch.long)  # (R, step) tokens of each live beam
    scores: Tensor | None = None  # (R,) cumulative log-probs
    finished: list[tuple[list[int], float]] = []
    top_finished = False
    for step in range(max_length):
        logp = torch.log_softmax(_mask(logits, sup, sup0, step), dim=-1)  # (R, V); R = 1 at step 0
        if scores is not None:
            logp = logp + scores[:, None]
        V = logp.shape[-1]
        top_scores, top_idx = logp.reshape(-1).topk(n_cand)  # best continuations over all beams
        origin, token = top_idx // V, top_idx % V  # (n_cand,) beam each extends, and its new token
        seqs = torch.cat([alive[origin], token[:, None]], dim=1)  # (n_cand, step + 1)
        last = step + 1 == max_length
        active, secondary = list(range(K)), K
        for k in range(K):
            is_eot = int(token[k]) == specials.eot
            if is_eot or last:
                top_finished = top_finished or k == 0
                finished.append((seqs[k, :-1 if is_eot else None].tolist(), float(top_scores[k])))
                for j in range(secondary, n_cand):  # the next candidate that does not end here takes slot k
                    if int(token[j]) != specials.eot:
                        active[k], secondary = j, j + 1
                        break
        if last or (top_finished if early_exit else len(finished) >= max_candidates):
            break
        sel = torch.tensor(active)
        alive, scores = seqs[sel], top_scores[sel]
        state.reorder(origin[sel])
        logits = model.decode(token[sel][:, None].to(audio_features.device), state)[:, -1]  # (K, V)
    ranked = [(t, s / (len(t) ** length_penalty if t else 1.0), s) for t, s in finished]
    best_tokens, _, raw = max(ranked, key=lambda r: r[1])
    return DecodeResult(best_tokens, raw, float(p_ns[specials.no_speech]))


@torch.no_grad()
def detect_language(model: Whisper, audio_features: Tensor,
                    specials: SpecialTokens) -> tuple[str, float, dict[str, float]]:
    """Most likely language of one window: softmax over the language tokens' logits after <|startoftranscript|>."""
    if not specials.languages:
        raise ValueError("this model has no language tokens (English-only?)")
    state = model.new_state(audio_features)
    logits = model.decode(torch.tensor([[specials.sot]], device=audio_features.device), state)[0, -1]  # (V,)
    codes = list(specials.languages)
    probs = torch.softmax(logits[[specials.languages[c] for c in codes]].float(), -1)
    ranked = sorted(zip(codes, probs.tolist(), strict=True), key=lambda cp: -cp[1])
    return ranked[0][0], ranked[0][1], dict(ranked)


# ------------------------------------------------------------------------------------------------------------
# Transcription


@dataclass
class Segment:
    """One decoded 30-second window."""

    start: float  # seconds
    end: float
    text: str
    tokens: list[int]
    avg_logprob: float
    no_speech_prob: float


@dataclass
class Transcription:
    text: str
    segments: list[Segment]
    language: str
    language_probability: float
    duration: float  # seconds of audio


def transcribe(model: Whisper, tokenizer: Any, audio: str | Path | np.ndarray | Tensor, *,
               sample_rate: int | None = None, language: str | None = None, task: str = "transcribe",
               beam_size: int = 1, patience: float = 1.0, length_penalty: float = 1.0,
               condition_on_previous_text: bool = True, no_speech_threshold: float | None = 0.6,
               log_prob_threshold: float | None = -1.0, without_timestamps: bool = True,
               max_new_tokens: int | None = None) -> Transcription:
    """Speech → text with ``model`` (a ``models.whisper.Whisper``) and its ``tokenizers.Tokenizer``.

    ``audio``: a file path (any sample rate; resampled to 16 kHz) or a waveform (16 kHz unless ``sample_rate``).
    Audio longer than 30 s is decoded window by window, each conditioned on the text so far
    (``condition_on_previous_text``). ``beam_size`` 1 is greedy. ``max_new_tokens`` bounds each window's tokens
    (faster-whisper's option, under the same cap rule)."""
    if not without_timestamps:
        raise NotImplementedError("timestamp decoding is not implemented; use without_timestamps=True")
    if task not in ("transcribe", "translate"):
        raise ValueError(f"task must be 'transcribe' or 'translate', got {task!r}")
    cfg = model.config
    specials = SpecialTokens.from_tokenizer(tokenizer, cfg.lang_ids if cfg.is_multilingual else ())
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    wave = load_waveform(audio, sample_rate)
    mel = log_mel(wave, cfg.n_mels).to(device)  # (n_mels, content_frames + 1)
    content_frames = mel.shape[1] - 1

    def encode(window: Tensor) -> Tensor:
        return model.encode(pad_or_trim(window)[None].to(dtype))  # (1, 1500, C)

    language_probability = 1.0
    if not cfg.is_multilingual:
        if language not in (None, "en"):
            raise ValueError(f"{cfg.name} is English-only; language {language!r} is not available")
        language, sot_sequence = "en", [specials.sot]
    else:
        if language is None:  # faster-whisper: the first window, its padding frame included
            with torch.no_grad():
                language, language_probability, _ = detect_language(model, encode(mel), specials)
        if language not in specials.languages:
            raise ValueError(f"unknown language {language!r}; known: {', '.join(specials.languages)}")
        sot_sequence = [specials.sot, specials.languages[language], getattr(specials, task)]

    suppress = sorted(set(cfg.suppress_ids))
    segments: list[Segment] = []
    all_tokens: list[int] = []
    prompt_reset_since = 0
    seek = 0
    while seek < content_frames:
        size = min(WINDOW_FRAMES, content_frames - seek)
        with torch.no_grad():
            features = encode(mel[:, seek : seek + size])
        previous = all_tokens[prompt_reset_since:]
        prompt = ([specials.sot_prev, *previous[-(cfg.n_text_ctx // 2 - 1):]] if previous else []) + sot_sequence
        prompt.append(specials.no_timestamps)
        cap = token_cap(model, len(prompt), max_new_tokens)
        if beam_size == 1:
            result = greedy_decode(model, features, prompt, specials, suppress, cfg.suppress_ids_begin, cap)
        else:
            result = beam_decode(model, features, prompt, specials, suppress, cfg.suppress_ids_begin, beam_size,
                                 patience, length_penalty, cap)
        start, end = seek * HOP / SAMPLE_RATE, (seek + size) * HOP / SAMPLE_RATE
        seek += size
        if no_speech_threshold is not None and result.no_speech_prob > no_speech_threshold and not (
                log_prob_threshold is not None and result.avg_logprob > log_prob_threshold):
            continue  # silence: nothing from this window
        text = tokenizer.decode([t for t in result.tokens if t < specials.eot])
        if not text.strip():
            continue
        segments.append(Segment(start, end, text, result.tokens, result.avg_logprob, result.no_speech_prob))
        all_tokens.extend(result.tokens)
        if not condition_on_previous_text:
            prompt_reset_since = len(all_tokens)
    return Transcription("".join(s.text for s in segments), segments, language, language_probability,
                         wave.numel() / SAMPLE_RATE)


__all__ = ["DecodeResult", "Segment", "SpecialTokens", "Transcription", "beam_decode", "detect_language",
           "clip_mel", "decoder_logits", "greedy_decode", "load_waveform", "log_mel", "pad_or_trim", "token_cap",
           "transcribe", "transcript_logprobs", "transcript_prompt"]
