"""The ``audio-classify`` task: voice commands (keyword spotting) trained on synthesised speech only and tested on
real recordings.

Data (``data.py``): the vocabulary's synthetic clips (espeak-ng, flite, piper; 8 kHz; cached, seeded) train the
model; another draw of synthetic speakers (seed ``synth_seed + 1``) is the validation curve; the Asterisk
recordings of the same words are the test set, read only by ``evaluate_run`` (``omnigpt eval``) — never by training
or model selection. Training rows are a pure function of (seed, step): an ``EpochOrder`` permutation, then per
batch a generator seeded by (seed, step, first row) draws the augmentation — white noise under each clip
(``speech.add_noise``), a vocal-tract-length and tempo warp of the log-mels (``speech.warp_features``) and
SpecAugment masks (``batches.spec_augment``).

Feature cache (``data.feature_cache_copies: N`` > 0, only when no stage trains the encoder): a frozen encoder's
pooled vectors do not change during training, so the task computes them once — copy 0 of every training clip clean,
copies 1 … N−1 augmented as above with a generator seeded by (seed, copy, clip) alone, and the validation clips
clean — and the head trains on them (a step picks a random copy per row, plus ``data.feature_dropout`` on the
vector): thousands of steps where the live path runs the encoder every step. The cache is computed in the task's
constructor, before the trainer's ``max_minutes`` clock starts (its wall time is printed and written to
``OUT_DIR/feature_cache.json``), and stored under ``cache_dir()/keywords/features-<hash>.safetensors``, keyed by the
data and augmentation settings and the encoder's weights (sha256), written beside and renamed. The saved model is
the same ``AudioClassifier`` (encoder + head), so ``omnigpt eval`` and the pipeline run it on raw audio.

Model (``models.audio_classifier.AudioClassifier``): ``encoder: scratch`` builds an ``AudioConfig`` preset trained
from scratch with per-band mean-normalised log-mels; ``encoder: whisper-tiny.en`` (or ``whisper-base``) loads that
pretrained Whisper's encoder (``checkpoints.registry``) and reads Whisper's own log-mel scaling — the recipe's
stage trains ``[head]`` only, so the encoder stays frozen and runs without autograd.

``omnigpt eval RUN``: accuracy and macro-F1 on every real recording of the vocabulary, the failures word by word,
a confusion-matrix PNG, and baselines measured in the same call on the same test clips: the majority class of the
training labels, and multinomial logistic regression on log-mel and on MFCC summaries (a 20-band × 15-segment grid
of the mean-normalised log-mel; 13 cepstra × 15 segments) fitted on the same synthetic training clips.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from omnigpt.apps.voice_commands.data import (
    SynthSettings,
    clip_features,
    read_clips,
    real_clips,
    spellings,
    synthetic_clips,
    vocabulary,
)
from omnigpt.checkpoints.state import load_model, saved_recipe
from omnigpt.data.batches import spec_augment
from omnigpt.data.speech import add_noise, warp_features
from omnigpt.files.assets import cache_dir
from omnigpt.models.audio import AudioConfig
from omnigpt.models.audio_classifier import AudioClassifier, AudioClassifierConfig
from omnigpt.train.recipe import RecipeError
from omnigpt.train.schedule import module_groups
from omnigpt.train.task import EpochOrder, LossOf, Task, evaluating

PRETRAINED = ("whisper-tiny.en", "whisper-base")  # offline Whisper encoders (checkpoints.registry)


@dataclass
class AudioDataSpec:
    """The vocabulary, its synthetic training and validation clips, the window and the augmentation."""

    words: str | list[str] = "commands"  # a name in apps.voice_commands.data.VOCABULARIES or a list of words
    per_word: int = 64  # synthetic training clips per word
    val_per_word: int = 4  # synthetic validation clips per word (another seed: unseen speaker draws)
    synth_seed: int = 0  # the training clips' speaker draw; validation uses synth_seed + 1
    piper: float = 0.3  # engine shares of the synthetic speakers (espeak-ng gets 1 − piper − flite)
    flite: float = 0.3
    warp: dict[str, list[float]] = field(default_factory=lambda: {k: list(v) for k, v in SynthSettings().warp.items()})
    seconds: float = 1.5  # window after trimming silence
    noise_db: list[float] = field(default_factory=lambda: [-75.0, -35.0])  # white-noise level below each peak
    freq_warp: list[float] = field(default_factory=lambda: [0.9, 1.12])  # VTLP factor range (1 = off)
    tempo: list[float] = field(default_factory=lambda: [0.85, 1.15])  # time-stretch range (1 = off)
    spec_augment: bool = True
    feature_cache_copies: int = 0  # > 0: train the head on cached pooled encoder vectors (copy 0 clean, the rest
    #                                augmented); needs a frozen encoder. 0: the encoder runs every step
    feature_dropout: float = 0.0  # dropout on the cached vectors (feature cache only)


@dataclass
class AudioModelSpec:
    """The encoder (from scratch: an ``AudioConfig`` preset + overrides; or a pretrained Whisper) and the head."""

    encoder: str = "scratch"  # "scratch" | "whisper-tiny.en" | "whisper-base"
    preset: str = "audio-small"  # AudioConfig preset (scratch only)
    audio: dict[str, Any] = field(default_factory=dict)  # AudioConfig overrides (scratch only), e.g. {n_layer: 2}
    head_hidden: int = 0  # 0: linear head; > 0: a two-layer MLP head
    head_dropout: float = 0.0


def synth_settings(d: AudioDataSpec) -> SynthSettings:
    return SynthSettings(piper=d.piper, flite=d.flite, warp={k: (float(v[0]), float(v[1])) for k, v in d.warp.items()})


def _pair(values: list[float], where: str) -> tuple[float, float]:
    if len(values) != 2 or values[0] > values[1]:
        raise RecipeError(f"data.{where}: expected [low, high] with low <= high, got {values}")
    return float(values[0]), float(values[1])


def classifier_config(r: Any, labels: tuple[str, ...], audio: AudioConfig | None = None) -> AudioClassifierConfig:
    """The model config of recipe ``r``; ``audio`` = a pretrained encoder's config (Whisper)."""
    m = r.model
    try:
        if m.encoder == "scratch":
            valid = [f.name for f in dataclasses.fields(AudioConfig) if f.name != "name"]
            if unknown := [k for k in m.audio if k not in valid]:
                raise RecipeError(f"model.audio: unknown key {unknown[0]!r}; valid keys: {', '.join(valid)}")
            audio = AudioConfig.from_name(m.preset, **m.audio)
        elif audio is None:  # checking a recipe: Whisper tiny's shape is enough to check the window
            from omnigpt.models.whisper import WhisperConfig

            audio = WhisperConfig.from_name(m.encoder).audio_config()
        return AudioClassifierConfig(name=r.out_dir, audio=audio, labels=labels,
                                     encoder="scratch" if m.encoder == "scratch" else "whisper",
                                     head_hidden=m.head_hidden, head_dropout=m.head_dropout, sample_rate=8000,
                                     seconds=r.data.seconds, cmn=m.encoder == "scratch",
                                     pretrained=None if m.encoder == "scratch" else m.encoder)
    except (TypeError, ValueError) as e:
        if isinstance(e, RecipeError):
            raise
        raise RecipeError(f"model: {e}") from None


def load_windows(records: list[dict[str, Any]], config: AudioClassifierConfig) -> tuple[Tensor, Tensor]:
    return read_clips([r["audio"] for r in records], config.sample_rate, config.seconds)


@torch.no_grad()
def predict(model: AudioClassifier, features: Tensor, batch_size: int = 128) -> Tensor:
    """Class probabilities (N, K) float32, in batches, in eval mode."""
    with evaluating(model):
        dev = next(model.parameters()).device
        out = [model(features[i : i + batch_size].to(dev)).logits.float().softmax(-1).cpu()
               for i in range(0, len(features), batch_size)]
    return torch.cat(out)


def summary_features(logmel: Tensor, kind: str, bands: int = 20, segments: int = 15) -> np.ndarray:
    """Fixed-size clip summaries for the linear baselines: the (mean-normalised) log-mel averaged into a
    ``bands`` × ``segments`` grid, or its first 13 DCT-II cepstra (MFCC) averaged into ``segments``."""
    x = logmel.float()  # (N, 80, T)
    if kind == "mfcc":
        from scipy.fft import dct

        c = torch.from_numpy(dct(x.numpy(), type=2, axis=1, norm="ortho")[:, :13])  # (N, 13, T)
        return nn.functional.adaptive_avg_pool1d(c, segments).flatten(1).numpy()
    return nn.functional.adaptive_avg_pool2d(x[:, None], (bands, segments)).flatten(1).numpy()


def linear_baselines(train_x: Tensor, train_y: list[str], test_x: Tensor, test_y: list[str],
                     labels: tuple[str, ...]) -> dict[str, Any]:
    """Majority class, and logistic regression on log-mel / MFCC summaries fitted on the synthetic training clips."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    from omnigpt.apps.common.baselines import majority_class
    from omnigpt.apps.common.metrics import classification_scores

    def rounded(scores: dict[str, float]) -> dict[str, float]:
        return {k: round(v, 4) for k, v in scores.items()}

    out: dict[str, Any] = {"majority_class": rounded(classification_scores(majority_class(train_y, len(test_y)),
                                                                           test_y, labels))}
    for kind in ("logmel", "mfcc"):
        t0 = time.perf_counter()
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.1))
        with threadpool_limits(1):
            clf.fit(summary_features(train_x, kind), train_y)
            pred = [str(p) for p in clf.predict(summary_features(test_x, kind))]
        out[f"{kind}_logreg"] = {**rounded(classification_scores(pred, test_y, labels)),
                                 "seconds": round(time.perf_counter() - t0, 1)}
    return out


def whisper_vocabulary(clips: list[dict[str, Any]], labels: Sequence[str], name: str = "whisper-tiny.en",
                       ) -> dict[str, Any]:
    """Zero-shot baseline: pretrained Whisper constrained to the vocabulary. Each clip's label is the word whose
    best spelling (``keywords.spellings``) has the highest log P(transcript | audio) under Whisper's prompt; no
    training, no synthetic data."""
    from omnigpt.apps.common.metrics import classification_scores
    from omnigpt.checkpoints.ctranslate2 import load_whisper
    from omnigpt.generate.whisper import SpecialTokens, clip_mel, transcript_logprobs, transcript_prompt

    t0 = time.perf_counter()
    model, tok = load_whisper(name)
    specials = SpecialTokens.from_tokenizer(tok, model.config.lang_ids if model.config.is_multilingual else ())
    prompt = transcript_prompt(specials, model.config.is_multilingual)
    owner, candidates = [], []
    for i, word in enumerate(labels):
        for text in spellings(word):
            owner.append(i)
            candidates.append(tok.encode(" " + text, add_special_tokens=False).ids)
    owner_t = torch.tensor(owner)
    pred = []
    for clip in clips:
        with torch.no_grad():
            logp = transcript_logprobs(model, model.encode(clip_mel(clip["audio"])[None]), prompt, candidates,
                                       specials.eot)  # (K,)
        best = torch.full((len(labels),), -math.inf).scatter_reduce(0, owner_t, logp, "amax")
        pred.append(labels[int(best.argmax())])
    scores = classification_scores(pred, [c["label"] for c in clips], labels)
    return {**{k: round(v, 4) for k, v in scores.items()}, "seconds": round(time.perf_counter() - t0, 1),
            "what": f"pretrained {name} scoring each word's spellings (zero-shot, closed vocabulary)"}


def weights_digest(module: nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes and bytes, in key order)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        t = v.detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def clip_generator(seed: int, copy: int, clip: int) -> torch.Generator:
    """The augmentation generator of feature-cache copy ``copy`` of training clip ``clip``: a function of the three
    alone, so a clip's copy is the same whichever batch it is computed in."""
    key = hashlib.sha256(f"audio-classify/{seed}/{copy}/{clip}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") >> 1)


class HeadLoss(nn.Module):
    """Cross-entropy of ``model.head`` on cached pooled vectors (B, C): the train module of the feature cache. Its
    parameters are the model's own (keys ``model.*``), so checkpoints and stages are those of ``LossOf(model)``."""

    def __init__(self, model: AudioClassifier) -> None:
        super().__init__()
        self.model = model

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return module_groups(self.model)

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return nn.functional.cross_entropy(self.model.head(features).float(), labels)  # features (B, C)


class AudioClassifyTask(Task):
    name = "audio-classify"
    data_spec, model_spec = AudioDataSpec, AudioModelSpec

    @classmethod
    def check_recipe(cls, r: Any) -> None:
        d, m = r.data, r.model
        if d.per_word < 1 or d.val_per_word < 1 or d.seconds <= 0:
            raise RecipeError("data: per_word >= 1, val_per_word >= 1 and seconds > 0 are required")
        if not 0 <= d.piper <= 1 or not 0 <= d.flite <= 1 or d.piper + d.flite > 1:
            raise RecipeError("data: piper and flite are shares in [0, 1] with piper + flite <= 1")
        for key in ("noise_db", "freq_warp", "tempo"):
            _pair(getattr(d, key), key)
        if d.feature_cache_copies < 0 or not 0 <= d.feature_dropout < 1:
            raise RecipeError("data: feature_cache_copies >= 0 and 0 <= feature_dropout < 1 are required")
        if d.feature_cache_copies and any(st.train is None or "encoder" in st.train for st in r.stages):
            raise RecipeError("data.feature_cache_copies needs a frozen encoder: every stage must train [head] "
                              "only (the cache holds the encoder's outputs)")
        if m.encoder != "scratch" and m.encoder not in PRETRAINED:
            raise RecipeError(f"model.encoder: 'scratch' or one of {', '.join(PRETRAINED)}, got {m.encoder!r}")
        try:
            labels = vocabulary(d.words)
            real_clips(labels)  # every word needs a real recording to be tested on (raises naming the others)
        except ValueError as e:
            raise RecipeError(f"data.words: {e}") from None
        classifier_config(r, labels)

    def __init__(self, r: Any) -> None:
        super().__init__(r)
        d = r.data
        self.labels = vocabulary(d.words)
        audio, encoder_state = None, None
        if r.model.encoder != "scratch":
            from omnigpt.checkpoints.registry import from_pretrained

            whisper = from_pretrained(r.model.encoder).model
            audio, encoder_state = whisper.config.audio_config(), whisper.encoder.state_dict()
        self.config = classifier_config(r, self.labels, audio)
        self.model = AudioClassifier(self.config)
        if encoder_state is not None:
            self.model.encoder.load_state_dict(encoder_state)
        self.preprocessor = None  # the config carries labels and the front end
        index = {w: i for i, w in enumerate(self.labels)}
        train = synthetic_clips(self.labels, d.per_word, d.synth_seed, synth_settings(d))
        val = synthetic_clips(self.labels, d.val_per_word, d.synth_seed + 1, synth_settings(d))
        self.train_w, self.train_len = load_windows(train, self.config)
        self.train_y = torch.tensor([index[c["label"]] for c in train])
        w, n = load_windows(val, self.config)
        self.val_x = clip_features(w, n, self.config.sample_rate, self.config.cmn)
        self.val_y = torch.tensor([index[c["label"]] for c in val])
        self.order = EpochOrder(len(train), r.seed)
        self.tokens_per_step = r.batch_size  # clips
        self.cache: Tensor | None = None  # (copies, N, C) pooled training vectors when the feature cache is on
        if d.feature_cache_copies:
            self.cache, self.val_features = self.feature_cache(
                {"train": [c["id"] for c in train], "val": [c["id"] for c in val]})

    def augment(self, waves: Tensor, lengths: Tensor, g: torch.Generator) -> Tensor:
        """Augmented log-mels (B, 80, T) of windows (B, S): noise, frequency/tempo warp, SpecAugment, drawn from
        ``g`` in that order."""
        d = self.r.data
        waves = add_noise(waves, lengths, g, *_pair(d.noise_db, "noise_db"))
        freq, tempo = _pair(d.freq_warp, "freq_warp"), _pair(d.tempo, "tempo")

        def warp(x: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
            return warp_features(x, frames, g, freq=freq, tempo=tempo)

        x = clip_features(waves, lengths, self.config.sample_rate, self.config.cmn,
                          augment=warp if (freq, tempo) != ((1.0, 1.0), (1.0, 1.0)) else None)  # (B, 80, T)
        return spec_augment(x, g) if d.spec_augment else x

    def copy_features(self, clips: Sequence[int], copy: int) -> Tensor:
        """Log-mels (n, 80, T) of training clips ``clips`` as feature-cache copy ``copy``: 0 = clean (what
        evaluation and the pipeline compute), ≥ 1 = augmented by ``clip_generator(seed, copy, clip)``."""
        idx = torch.tensor(list(clips), dtype=torch.long)
        if copy == 0:
            return clip_features(self.train_w[idx], self.train_len[idx], self.config.sample_rate, self.config.cmn)
        return torch.cat([self.augment(self.train_w[i : i + 1], self.train_len[i : i + 1],
                                       clip_generator(self.r.seed, copy, i)) for i in idx.tolist()])

    @torch.no_grad()
    def feature_cache(self, clip_ids: dict[str, list[str]], chunk: int = 64) -> tuple[Tensor, Tensor]:
        """(copies, N, C) pooled vectors of the training clips and (N_val, C) of the clean validation clips, read
        from the cache or computed (then written atomically); the wall time goes to ``OUT_DIR/feature_cache.json``."""
        from safetensors import safe_open
        from safetensors.torch import save_file

        r, d = self.r, self.r.data
        copies, n, n_val = d.feature_cache_copies, len(self.train_y), len(self.val_y)
        spec = {"version": 1, "clips": clip_ids, "seed": r.seed, "copies": copies, "seconds": d.seconds,
                "rate": self.config.sample_rate, "cmn": self.config.cmn, "noise_db": d.noise_db,
                "freq_warp": d.freq_warp, "tempo": d.tempo, "spec_augment": d.spec_augment,
                "synth": dataclasses.asdict(synth_settings(d)), "synth_seed": d.synth_seed,
                "encoder": r.model.encoder, "encoder_sha256": weights_digest(self.model.encoder)}
        tag = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        path = cache_dir() / "keywords" / f"features-{tag}.safetensors"
        t0 = time.perf_counter()
        train = val = None
        if path.is_file():
            try:
                with safe_open(str(path), framework="pt") as f:
                    train, val = f.get_tensor("train"), f.get_tensor("val")
                    built = json.loads(f.metadata()["built"])
                if train.shape[:2] != (copies, n) or val.shape[0] != n_val:
                    train = val = None
            except Exception:  # unreadable or truncated: compute it again
                train = val = None
        computed = train is None or val is None
        if computed:
            with evaluating(self.model):
                val = torch.cat([self.model.pooled(self.val_x[i : i + chunk]) for i in range(0, n_val, chunk)])
                rows = []
                for c in range(copies):
                    rows.append(torch.cat([self.model.pooled(self.copy_features(range(i, min(i + chunk, n)), c))
                                           for i in range(0, n, chunk)]))
                    print(f"feature cache: copy {c + 1}/{copies} of {n} clips done at "
                          f"{time.perf_counter() - t0:.0f} s", flush=True)
            train = torch.stack(rows)  # (copies, N, C)
            built = {"seconds": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads(),
                     "encoder_forwards": copies * n + n_val}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
            save_file({"train": train.contiguous(), "val": val.contiguous()}, str(tmp),
                      metadata={"spec": json.dumps(spec, sort_keys=True), "built": json.dumps(built)})
            os.replace(tmp, path)
        info = {"path": str(path), "computed_now": computed, "seconds_now": round(time.perf_counter() - t0, 1),
                "built": built, "copies": copies, "clips": n, "val_clips": n_val}
        print(f"feature cache {'computed' if computed else 'read'} in {info['seconds_now']} s: {path}", flush=True)
        out = Path(r.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "feature_cache.json").write_text(json.dumps(info, indent=1) + "\n")
        return train, val

    def train_module(self) -> nn.Module:
        return LossOf(self.model) if self.cache is None else HeadLoss(self.model)

    def batch(self, step: int, start: int, count: int) -> dict[str, Tensor]:
        idx = torch.tensor(self.order.rows(step, start, count, self.r.batch_size))
        g = torch.Generator().manual_seed(self.r.seed * 1_000_003 + step * 4099 + start)
        if self.cache is not None:  # a random cached copy per row, then dropout on the vector
            x = self.cache[torch.randint(len(self.cache), (len(idx),), generator=g), idx]  # (B, C)
            if p := self.r.data.feature_dropout:
                x = x * (torch.rand(x.shape, generator=g) >= p) / (1 - p)
            return {"features": x, "labels": self.train_y[idx]}
        x = self.augment(self.train_w[idx], self.train_len[idx], g)  # (B, 80, T)
        return {"input_features": x, "labels": self.train_y[idx]}

    @torch.no_grad()
    def evaluate(self, limit: int | None, dtype: torch.dtype | None, loss_module: nn.Module | None,
                 ) -> dict[str, Any]:
        """Loss and accuracy on the first ``limit`` synthetic validation clips (all when None)."""
        y = self.val_y[:limit]
        if self.cache is None:
            probs = predict(self.model, self.val_x[:limit])
        else:  # the head on the cached clean vectors: what predict computes, without running the encoder again
            dev = next(self.model.parameters()).device
            probs = self.model.head(self.val_features[:limit].to(dev)).float().softmax(-1).cpu()
        return {"val_loss": float(nn.functional.nll_loss(probs.clamp_min(1e-12).log(), y)),
                "val_accuracy": float((probs.argmax(-1) == y).float().mean())}

    @classmethod
    def evaluate_run(cls, checkpoint: Path, out: Path, limit: int | None = None) -> dict[str, Any]:
        model = load_model(checkpoint)
        if not isinstance(model, AudioClassifier):
            raise ValueError(f"{checkpoint}: not an audio classifier ({type(model).__name__})")
        cfg, labels = model.config, model.config.labels
        test = real_clips(labels)[:limit]
        t0 = time.perf_counter()
        w, n = load_windows(test, cfg)
        test_x = clip_features(w, n, cfg.sample_rate, cfg.cmn)
        probs = predict(model, test_x)
        seconds = time.perf_counter() - t0
        pred = [labels[i] for i in probs.argmax(-1).tolist()]
        truth = [c["label"] for c in test]
        from omnigpt.apps.common.figures import confusion_png
        from omnigpt.apps.common.metrics import classification_scores, confusion

        res: dict[str, Any] = {
            "task": cls.name, "data": f"Asterisk en_US_f_Allison recordings of {len(labels)} words ({len(test)} "
                                      f"clips, 8 kHz, one speaker); training was synthetic speech only",
            **{k: round(v, 4) for k, v in classification_scores(pred, truth, labels).items()}, "n": len(test),
            "clips_per_second": round(len(test) / seconds, 1),
            "failures": [{"id": c["id"], "label": t, "predicted": p, "score": round(float(probs[i].max()), 3),
                          "label_score": round(float(probs[i, labels.index(t)]), 3)}
                         for i, (c, t, p) in enumerate(zip(test, truth, pred, strict=True)) if t != p]}
        # The baselines fit the run's own synthetic training clips (without augmentation) and score the same clips.
        data = saved_recipe(checkpoint).get("data", {})
        spec = AudioDataSpec(**{k: v for k, v in data.items() if k in {f.name for f in dataclasses.fields(
            AudioDataSpec)}})
        train = synthetic_clips(labels, spec.per_word, spec.synth_seed, synth_settings(spec))
        tw, tn = load_windows(train, cfg)
        res["baselines"] = linear_baselines(clip_features(tw, tn, cfg.sample_rate, True), [c["label"] for c in train],
                                            clip_features(w, n, cfg.sample_rate, True), truth, labels)
        res["baselines"]["whisper_vocabulary"] = whisper_vocabulary(test, labels)
        out.mkdir(parents=True, exist_ok=True)
        cm = confusion(pred, truth, labels)
        kind = f"frozen {cfg.pretrained} encoder + head" if cfg.pretrained else "from scratch"
        confusion_png(cm, labels, out / "confusion.png",
                      f"Voice commands ({kind}), trained on synthetic speech\nreal Asterisk recordings: "
                      f"{100 * res['accuracy']:.1f}% of {len(test)}")
        cache_info = checkpoint.parent.parent / "feature_cache.json"  # RUN/checkpoints/step_N → RUN
        if cache_info.is_file():
            res["feature_cache"] = json.loads(cache_info.read_text())
        res["confusion_matrix"] = cm
        res["labels"] = list(labels)
        res["pictures"] = ["confusion.png"]
        return res


__all__ = ["AudioClassifyTask", "AudioDataSpec", "AudioModelSpec", "HeadLoss", "clip_generator", "linear_baselines",
           "predict", "summary_features", "weights_digest", "whisper_vocabulary"]
