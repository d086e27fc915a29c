"""Multimodal results on 2 CPU cores, from scratch, from the real offline assets (``omnigpt.data.multimodal``).

* ``fmnist``  — zero-shot Fashion-MNIST: an image–text CLIP model (``clip-fmnist``-sized ViT + causal text tower,
  character tokenizer) trained ≤ ``--minutes`` on train-set images paired with templated captions of their class
  ("a photo of a sneaker."), class-balanced batches with multi-positive targets; tested on the 10,000 test images
  against prompt-ensembled class embeddings (no classifier head). Aim ≥ 75%.
* ``speech``  — a ``MultimodalGPT`` (Whisper-style audio encoder + projector + character-level GPT decoder) trained
  only on speech synthesised from the transcripts of the Asterisk digits and letters prompts — espeak-ng / flite
  (many voices, speeds, pitches) and, for half of every batch, piper's neural voice with its pitch and formants
  shifted ×0.95–1.3, all through an 8 kHz channel; per-clip frequency warp (×1–1.2) and slower tempo (×1–1.25) of
  the log-mels, SpecAugment — then asked to transcribe the *real* recordings (one human speaker, never heard in
  training). Free greedy generation, scored by WER. Aim ≤ 30%. ``SPEECH_RECIPE`` holds the recipe.
* ``emoji``   — image–name retrieval on held-out emoji: a CLIP model on Noto Color Emoji renderings and their CLDR
  names, evaluated on the ~10% of emoji held out by name (recall@1/5/10 image→name among all held-out names).
  Retrieval rather than generation because most held-out names are new word combinations ("… medium skin
  tone", "flag: …"): recall@k measures whether image and name parts were aligned compositionally, where exact
  generation of an unseen name would score ~0 at this budget and say little.

Usage: ``python benchmarks/multimodal.py {fmnist,speech,emoji,all} [--seeds 0 1] [--minutes 5] [--threads 1]``.
Every run prints one JSON line per seed with the metric, steps, wall time and seed. On a shared 2-core machine
use ``--threads 1``: with 2 threads and other jobs running, OpenMP's spinning made steps up to 10× slower.

Results, 2026-11-28, 2-core CPU shared with other jobs (load varied; steps show it), 1 thread, from scratch:

=========================  ==========  ====================================================================
fmnist, 5 min              seed 0      zero-shot test accuracy 81.6% (1,625 steps of 80 images, quiet machine)
                           seed 0      75.0% (475 steps: the same run under load average ~8)
                           seed 1      78.8% (1,446 steps)
speech, 14 min             seed 0      real Asterisk WER 46.4%, exact match 52.3% (155 utterances; 1,585 steps);
                                       held-out *synthetic* voices WER 25.9%; CTC head alone 93.4% WER
speech, 14 min             seed 1      real WER 66.3%, exact match 31.0%; synthetic held-out WER 33.2% (1,633 steps)
emoji, 5 min               seed 0      held-out image→name R@1 10.4%, R@5 29.1%, R@10 39.0% among 395
                                       (chance R@1 0.25%); name→image R@1 10.9%
=========================  ==========  ====================================================================

Speech, what moved the real WER: each row one 14-minute run (one 12) on the shared machine (another job's
training ran on the second core), 1 thread. "synth" is the WER on 306 clips of held-out espeak-ng/flite voices;
"CTC" the CTC head read alone. The synthetic→real gap is a domain shift, not under-fitting: the espeak-ng/flite-
only model reads unseen synthetic voices at 14–15% WER and the real speaker at 74–77%.

=================================================  ====  =====  ========  =====  =====  =====
recipe                                             seed  steps  real WER  exact  synth  CTC
=================================================  ====  =====  ========  =====  =====  =====
espeak-ng/flite only (the earlier default)         0     1,560  77.1%     27.7%  15.2%  92.8%
                                                   1     1,622  73.5%     31.6%  13.7%  95.8%  (12 min)
and piper joe ×0.95–1.3, half of each batch        0     1,631  55.4%     45.2%  18.9%  92.8%
                                                   1     1,525  60.2%     39.4%  29.0%  96.4%
and log-mel warp ×1–1.2, tempo ×1–1.25 (default)   0     1,585  46.4%     52.3%  25.9%  93.4%
                                                   1     1,633  66.3%     31.0%  33.2%  94.0%
piper + CMN + noise −75…−40 dB (no warp/tempo)     0     1,242  88.6%     12.3%  75.6%  97.6%
the same in one stage (no encoder-only CTC stage)  0       821  100%      3.9%   96.7%  99.4%
=================================================  ====  =====  ========  =====  =====  =====

The human-sounding neural voice is the big step: 77.1 / 73.5% → 55.4 / 60.2% (seeds 0 / 1; mean 75.3% → 57.8%):
espeak-ng and flite differ from a person in ways no amount of their own variety covers. Shifting the spectrum up
and slowing the clips — towards a female speaker who reads the prompts slowly (her trimmed clips last 0.78 s at
the median, the synthetic ones 0.57 s) — gave 46.4 / 66.3% (mean 56.4%): better on seed 0, worse on seed 1, so its
effect is inside the 15–20-point seed spread at this budget, not resolved; it stays in the default for the best
mean and best run, and it costs fit on the synthetic voices (26–33% against 19–29%). The 30% aim is not reached.
Per-clip cepstral-mean normalisation plus white noise up to −40 dB slowed the encoder's CTC stage (its loss at step
400: 1.64, against 1.34–1.42 without them), so that run ended under-fitted even on synthetic speech (the machine
was also busier: 1,242 steps); dropping the encoder-only CTC stage was worse still. CMN and noise stay in
``omnigpt.data.speech`` and the recipe, off (``--speech-recipe '{"cmn": true, "noise": [-80, -55]}'`` turns them
on). Next to try: milder noise, more piper clips (10 per text now), more neural voices, more steps, several seeds
per setting. The CTC head alone stays at ~93% WER: the decoder, which only has to pick among the known words,
carries the transcripts. BLEU is reported by ``text_scores`` but is 0 by construction for one-word references
(no 4-grams).
"""

from __future__ import annotations

import argparse
import json
import os
import string
import time
from pathlib import Path

import torch

from omnigpt.config import GPTConfig
from omnigpt.data import multimodal as mm
from omnigpt.data import speech as sp
from omnigpt.data import speech_sources
from omnigpt.models.contrastive import ContrastiveConfig, ContrastiveModel, clip_loss
from omnigpt.models.vision import VisionConfig
from omnigpt.text.tokenizer import CharTokenizer
from omnigpt.train.multimodal_lib import (
    AudioCTC,
    Stage,
    class_balanced_batch,
    fit,
    retrieval_recall,
    tokenize_texts,
    zero_shot_accuracy,
)

CACHE = Path(os.environ.get("OMNIGPT_CACHE", Path.home() / ".cache" / "omnigpt")) / "multimodal"
FMNIST_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "a {}.", "a grayscale photo of a {}.",
                    "a low resolution photo of a {}.", "an item of clothing: {}.", "this is a {}.")


def char_tokenizer() -> CharTokenizer:
    """Printable ASCII + the end-of-text token: any English prompt encodes, so zero-shot prompts are free text."""
    return CharTokenizer(sorted(set(string.printable) - set("\t\n\r\x0b\x0c")), ["<|endoftext|>"])


def log(row: dict) -> None:
    print(json.dumps(row), flush=True)


# ------------------------------------------------------------------------------------------------------------


def class_text_loss(model: ContrastiveModel, b: dict) -> torch.Tensor:
    """CLIP loss between a batch of images and one caption per *class* (row c = class c), gathered per image."""
    img = model.encode_image(b["pixel_values"])
    txt = model.encode_text(b["input_ids"], b["attention_mask"])[b["group_ids"]]  # (N, D): each image's caption
    return clip_loss(img, txt, model.scale(), group_ids=b["group_ids"])


def fmnist(seed: int, minutes: float) -> dict:
    torch.manual_seed(seed)
    tok = char_tokenizer()
    eos = tok.token_to_id("<|endoftext|>")
    x_tr, y_tr = mm.load_fashion_mnist("train")
    x_te, y_te = mm.load_fashion_mnist("test")
    # Exactly Processor(image_size=28, image_mode="L", mean 0.5, std 0.5) on the PNGs (tests/test_mm_data.py).
    to_t = lambda x: (torch.from_numpy(x.copy()).float()[:, None] / 255.0 - 0.5) / 0.5  # (N, 1, 28, 28)
    pix_tr, pix_te = to_t(x_tr), to_t(x_te)
    labels = torch.from_numpy(y_tr)
    names = [c.lower() for c in mm.FASHION_MNIST_CLASSES]
    cfg = ContrastiveConfig(name="clip-fmnist-char", embed_dim=128,
                            vision=VisionConfig.from_name("vit-fmnist"),
                            text=GPTConfig(name="clip-text", vocab_size=len(tok), block_size=48, n_layer=2,
                                           n_head=4, n_embd=128))
    model = ContrastiveModel(cfg)
    g = torch.Generator().manual_seed(seed)
    # Each step draws one template per class and encodes only those 10 prompts; every image in the class-balanced
    # batch is paired with its class's prompt, and clip_loss's multi-positive targets (group_ids) treat all
    # same-class pairs as positives. 10 text sequences per step instead of 160: the text tower costs 16× less.
    prompts = [[t.format(n) for t in FMNIST_TEMPLATES] for n in names]

    def batch(step: int) -> dict:
        idx = class_balanced_batch(labels, 10, 8, g)
        k = torch.randint(len(FMNIST_TEMPLATES), (10,), generator=g)
        ids, mask = tokenize_texts(tok, [prompts[c][int(k[c])] for c in range(10)], 48, eos)
        return {"pixel_values": pix_tr[idx], "input_ids": ids, "attention_mask": mask, "group_ids": labels[idx]}

    t0 = time.perf_counter()
    steps = 2000  # an upper bound: the wall-clock budget ends the run (and its cosine) first on 2 cores
    hist = fit(model, [Stage("contrastive", steps, lr=3e-3, warmup=30, min_lr_ratio=0.05)], batch, class_text_loss,
               time_limit=minutes * 60, log_every=25, log=lambda r: print(json.dumps(r), flush=True))
    train_s = time.perf_counter() - t0
    done = hist[-1]["step"]
    res = zero_shot_accuracy(model, tok, pix_te, torch.from_numpy(y_te), names, FMNIST_TEMPLATES, 48, eos)
    return {"task": "fashion-mnist zero-shot", "seed": seed, "test_accuracy": res["accuracy"], "steps": done,
            "train_seconds": round(train_s, 1), "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------------------------
# Speech: synthesised training, real evaluation

SPEECH_SECONDS = 1.6  # window after trimming silence: 160 mel frames → 80 encoder tokens → 20 decoder positions
SPEECH_RATE = 8000  # every clip, synthesised and real, is 8 kHz telephone audio
# The training data and augmentations (``--speech-recipe JSON`` overrides keys for ablations). ``data``: synthetic
# sets built once into the cache by ``prepare_synth_speech`` (name, options); ``weights``: each set's share of a
# batch (None: by size); ``noise``: white-noise level range in dB below the peak (``data.speech.add_noise``);
# ``cmn``: per-band mean normalisation of train and test log-mels; ``vtlp`` / ``tempo``: per-clip frequency and
# time factor ranges (``data.speech.warp_features``); ``schedule``: "staged" (encoder + CTC, then all) or "single".
SPEECH_RECIPE = {
    "data": [["synth-speech-8k", {"per_text": 24, "seed": 0}],  # espeak-ng 70% / flite 30%, 3,672 clips
             ["synth-piper-8k", {"per_text": 10, "seed": 1, "piper": 1.0, "flite": 0.0,  # piper joe, 1,530 clips
                                 "warp": {"piper": [0.95, 1.3]}}]],
    "weights": [1, 1], "noise": None, "cmn": False, "vtlp": [1.0, 1.2], "tempo": [1.0, 1.25],
    "schedule": "staged", "lr": 2e-3, "ctc_weight": 0.5}


def speech_data(exp: dict) -> tuple[list[dict], tuple, list[dict], tuple]:
    """Synthesised training clips (prepared once into the cache) and the real Asterisk test clips, as waveforms."""
    train, waves, lengths = [], [], []
    for name, opts in exp["data"]:
        synth_dir = CACHE / name
        if not (synth_dir / "manifest.json").is_file():
            mm.prepare_multimodal("synth-speech", synth_dir, sample_rate=SPEECH_RATE, **opts)
        recs = mm.read_captions(synth_dir / "train.jsonl")
        cached = synth_dir / f"waves-{SPEECH_SECONDS:g}s.pt"
        if cached.is_file():
            w, n = torch.load(cached, weights_only=True)
        else:
            w, n = sp.load_windows([r["audio"] for r in recs], SPEECH_SECONDS, SPEECH_RATE)
            w = w.half()
            torch.save((w, n), cached)
        train += [{**r, "set": name} for r in recs]
        waves.append(w)
        lengths.append(n)
    test = speech_sources.asterisk_prompts(("digits", "letters"))
    test_w = sp.load_windows([r["audio"] for r in test], SPEECH_SECONDS, SPEECH_RATE)
    return train, (torch.cat(waves).float(), torch.cat(lengths)), test, test_w


def speech(seed: int, minutes: float, recipe: dict | None = None) -> dict:
    from omnigpt.models.audio import AudioConfig
    from omnigpt.models.multimodal import MultimodalConfig, MultimodalGPT, ProjectorConfig
    from omnigpt.text.processors import Processor, ProcessorConfig
    from omnigpt.train.multimodal_lib import generate_answers, spec_augment, text_scores

    torch.manual_seed(seed)
    tok = CharTokenizer(sorted(set(string.ascii_lowercase + string.digits + " '")), ["<|endoftext|>"])
    Processor(tok)  # registers the multimodal special tokens, so their ids are known to the config
    audio_id = tok.token_to_id("<|audio|>")
    cfg = MultimodalConfig(
        name="asr-char", text=GPTConfig(name="asr-decoder", vocab_size=len(tok), block_size=96, n_layer=3, n_head=4,
                                        n_embd=128),
        audio=AudioConfig.from_name("audio-small"), audio_projector=ProjectorConfig("mlp", 4),
        audio_token_id=audio_id, audio_frames=int(SPEECH_SECONDS * 100))
    proc = Processor(tok, ProcessorConfig(**cfg.processor_kwargs()))
    exp = {**SPEECH_RECIPE, **(recipe or {})}
    print(json.dumps({"speech_recipe": exp}), flush=True)
    train, (train_w, train_n), test, (test_w, test_n) = speech_data(exp)
    test_x = sp.window_features(test_w, test_n, SPEECH_RATE, exp["cmn"])
    eos = tok.token_to_id("<|endoftext|>")
    prefix = proc.encode_sample("<|audio|>", 0, 1)
    answers = [tok.encode(r["text"]) + [eos] for r in train]
    model = MultimodalGPT(cfg)
    g = torch.Generator().manual_seed(seed)
    warp = lambda x, f: sp.warp_features(x, f, g, tuple(exp["vtlp"] or (1, 1)), tuple(exp["tempo"] or (1, 1)))

    def batch(step: int, pool: torch.Tensor) -> dict:
        idx = pool[torch.multinomial(pool_p, 32, replacement=True, generator=g)]
        w, n = train_w[idx], train_n[idx]
        if exp["noise"]:
            w = sp.add_noise(w, n, g, *exp["noise"])
        x = sp.window_features(w, n, SPEECH_RATE, exp["cmn"], warp if exp["vtlp"] or exp["tempo"] else None)
        rows = [prefix + answers[i] for i in idx.tolist()]
        T = max(map(len, rows))
        ids = torch.full((len(rows), T), eos)
        labels = torch.full((len(rows), T), -100)
        for j, r in enumerate(rows):
            ids[j, : len(r)] = torch.tensor(r)
            labels[j, len(prefix) : len(r)] = torch.tensor(r[len(prefix) :])
        mask = (labels != -100).long()
        mask[:, : len(prefix)] = 1
        chars = [answers[i][:-1] for i in idx.tolist()]  # CTC targets: the characters, no eos
        return {"input_ids": ids, "attention_mask": mask, "labels": labels,
                "input_features": spec_augment(x, g), "ctc_targets": torch.tensor(sum(chars, [])),
                "ctc_lengths": torch.tensor([len(c) for c in chars])}

    # Hold out 2 synthetic voices per text (in-domain check: does the model read synthetic speech it has not
    # heard?); the real recordings are the benchmark.
    held = torch.tensor([r["set"] == exp["data"][0][0] and int(r["id"].rsplit("_", 1)[1]) >= 22 for r in train])
    train_idx = (~held).nonzero().flatten()
    # Each synthetic set's share of every batch (``weights``; none: every clip equally likely).
    sets = [train[i]["set"] for i in train_idx.tolist()]
    pool_p = torch.ones(len(sets))
    if exp["weights"]:
        share = dict(zip([d[0] for d in exp["data"]], exp["weights"], strict=True))
        pool_p = torch.tensor([share[k] / sets.count(k) for k in sets])
    t0 = time.perf_counter()
    # Staged (LLaVA-style, adapted to encoders trained from scratch): stage 1 trains the audio encoder with the CTC
    # head only — cheap, and it gives the encoder a reading of the words; stage 2 trains everything, the freshly
    # initialised projector and decoder at full rate, the aligned encoder at half rate.
    net = AudioCTC(model, exp["ctc_weight"])  # the CTC head on the audio encoder, for training only
    stages = [Stage("encoder-ctc", 1500, lr=2e-3, warmup=50, min_lr_ratio=0.2, train=("audio_encoder", "ctc_head")),
              Stage("full", 1500, lr=2e-3, warmup=20, min_lr_ratio=0.05,
                    lr_scale={"audio_encoder": 0.5, "ctc_head": 0.5})]
    if exp["schedule"] == "single":
        stages = [Stage("full", 3000, lr=exp["lr"], warmup=50, min_lr_ratio=0.05)]
    hist = fit(net, stages, lambda step: batch(step, train_idx), lambda m, b: m(**b), time_limit=minutes * 60,
               log_every=50, log=lambda r: print(json.dumps(r), flush=True))
    train_s = time.perf_counter() - t0
    refs = [r["text"] for r in test]
    preds = generate_answers(model, proc, "<|audio|>", audio=test_x, max_new_tokens=24)
    scores = text_scores(preds, refs)
    ctc_wer = text_scores(net.ctc_greedy(test_x, tok), refs)["wer"]
    held_idx = held.nonzero().flatten()
    held_x = sp.window_features(train_w[held_idx], train_n[held_idx], SPEECH_RATE, exp["cmn"])
    synth_preds = generate_answers(model, proc, "<|audio|>", audio=held_x, max_new_tokens=24)
    synth_wer = text_scores(synth_preds, [train[i]["text"] for i in held_idx.tolist()])["wer"]
    errors = [(r, p) for r, p in zip(refs, preds, strict=True) if r != p.strip()]
    return {"task": "asterisk digits+letters transcription (trained on synthesised speech only)", "seed": seed,
            **{k: round(v, 4) for k, v in scores.items()}, "ctc_head_wer": round(ctc_wer, 4),
            "heldout_synthetic_voices_wer": round(synth_wer, 4), "utterances": len(test),
            "steps": hist[-1]["step"], "train_seconds": round(train_s, 1), "threads": torch.get_num_threads(),
            "some_errors": errors[:12]}


# ------------------------------------------------------------------------------------------------------------
# Emoji: image–name retrieval on held-out emoji


def emoji(seed: int, minutes: float) -> dict:
    from omnigpt.text.processors import Processor, ProcessorConfig

    torch.manual_seed(seed)
    root = CACHE / "emoji-32"
    if not (root / "manifest.json").is_file():
        mm.prepare_multimodal("emoji", root, size=32)
    tok = char_tokenizer()
    eos = tok.token_to_id("<|endoftext|>")
    proc = Processor(tok, ProcessorConfig(image_size=32, image_tokens=16))
    train, test = mm.read_captions(root / "train.jsonl"), mm.read_captions(root / "test.jsonl")
    keep = lambda t: "".join(c for c in t if c in string.printable)  # a few CLDR names have non-ASCII letters
    pix_tr = torch.stack([proc.image(r["image"]) for r in train])
    pix_te = torch.stack([proc.image(r["image"]) for r in test])
    cfg = ContrastiveConfig(name="clip-emoji-char", embed_dim=128, vision=VisionConfig.from_name("vit-emoji"),
                            text=GPTConfig(name="clip-text", vocab_size=len(tok), block_size=64, n_layer=2, n_head=4,
                                           n_embd=128))
    model = ContrastiveModel(cfg)
    ids_tr, mask_tr = tokenize_texts(tok, [keep(r["text"]) for r in train], 64, eos)
    g = torch.Generator().manual_seed(seed)

    def batch(step: int) -> dict:
        idx = torch.randperm(len(train), generator=g)[:128]
        T = int(mask_tr[idx].sum(1).max())
        return {"pixel_values": pix_tr[idx], "input_ids": ids_tr[idx, :T], "attention_mask": mask_tr[idx, :T]}

    t0 = time.perf_counter()
    hist = fit(model, [Stage("contrastive", 3000, lr=2e-3, warmup=30, min_lr_ratio=0.05)], batch,
               time_limit=minutes * 60, log_every=50, log=lambda r: print(json.dumps(r), flush=True))
    train_s = time.perf_counter() - t0
    rec = retrieval_recall(model, tok, pix_te, [keep(r["text"]) for r in test], (1, 5, 10), 64, eos)
    return {"task": f"emoji image->name retrieval among {len(test)} held-out names", "seed": seed,
            **{k: round(v, 4) for k, v in rec.items()}, "chance_r@1": round(1 / len(test), 4),
            "train_pairs": len(train), "steps": hist[-1]["step"], "train_seconds": round(train_s, 1),
            "threads": torch.get_num_threads()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=["fmnist", "speech", "emoji", "all"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="training wall-clock budget per run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speech-recipe", type=json.loads, default={}, metavar="JSON",
                    help="overrides of SPEECH_RECIPE for ablations, e.g. '{\"cmn\": true}'")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tasks = ["fmnist", "speech", "emoji"] if args.task == "all" else [args.task]
    for task in tasks:
        for seed in args.seeds:
            extra = {"recipe": args.speech_recipe} if task == "speech" else {}
            log(globals()[task](seed, args.minutes, **extra))


if __name__ == "__main__":
    main()
