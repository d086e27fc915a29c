"""Speech recognition: omnigpt's Whisper tiny.en against faster-whisper (CTranslate2) on the same weights.

Data: the 563 Asterisk prompts with transcripts (Debian ``asterisk-core-sounds-en-wav`` + ``asterisk-core-sounds-en``,
one speaker, 8 kHz telephone audio) and the 5 LibriVox read-speech clips of Debian ``pocketsphinx-testdata``
(16 kHz). Both systems get the same 16 kHz waveform (omnigpt's resampler), greedy decoding, one temperature, no
timestamps, the same thread count; the run reports corpus WER (``train.metrics.word_error_rate`` on normalised text:
jiwer's figure, tests/apps/asr/test_whisper_finetune.py checks; unlike jiwer it takes a reference that normalises to
nothing, the Asterisk silence clips under ``english``) under three normalisations and the real-time
factor (processing seconds / audio seconds, model loading excluded) of each, plus how many transcripts are
token-for-token identical.

Normalisations, applied to reference and hypothesis alike:
* ``basic``: lower case, bracketed notes dropped, "." removed, every other character outside [a-z0-9'] → space
  (``text.normalize.normalize_basic``);
* ``numbers``: ``basic``, then each digit string spelled out as an English cardinal ("50" → "fifty", "1234" →
  "one thousand two hundred thirty four", "28.8" → "twenty eight point eight") and "%" → "percent", so "dial 2"
  and "dial two" agree (``text.normalize.normalize_numbers``).
* ``english``: ``numbers`` plus ordinals ("21st" → "twenty first"), "$5" → "five dollars", "1,000" → "1000", OpenAI
  Whisper's English rules for notes in parentheses (dropped: the silence clips' "(2 seconds of silence)"), fillers
  and contractions ("i'm" → "i am"), and a few spelling pairs ("okay"/"ok", "e-mail"/"email") —
  ``text.normalize.normalize_english``, what ``omnigpt eval`` reports for ``asr-whisper`` runs.

References are the Asterisk lines as transcribed (``raw``: "28.8", "(1 second of silence)"), so every normaliser
reads the same text (``basic`` of them is the stored normalised ``text``).

``--run DIR`` (repeatable) adds a Whisper run of the ``asr-whisper`` task (fine-tuned or from scratch) as a column.

Run: ``.venv/bin/python benchmarks/asr.py [--limit N] [--threads 2] [--run RUN ...]`` (all 568 clips; 28 min on a
shared 2-core machine at load ~5). Measured there (2 threads, greedy): token ids identical on 563/563 Asterisk and
5/5 LibriVox clips, so both systems score alike under any normaliser; Asterisk WER 10.97 % basic / 10.31 % numbers
/ 7.94 % english, LibriVox 5.63 % under all three; real-time factor 0.504 vs 0.495 (Asterisk), 0.536 vs 0.491
(LibriVox). The 9.3 % quoted elsewhere for faster-whisper on these clips (lower case, punctuation stripped, digits
kept) was not reproduced: basic gives 10.97 %, jiwer's own ``RemovePunctuation`` chain 11.19 % on the raw lines
(11.09 % on the normalised ones), and leaving out the silence clips 9.88 % (basic) / 10.10 % (jiwer); its audio
decoding (PyAV's resampler), clip set or normaliser must differ.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from omnigpt.apps.asr.evaluate import real_recordings
from omnigpt.apps.asr.task import load_run
from omnigpt.apps.common.metrics import word_error_rate
from omnigpt.checkpoints.ctranslate2 import load_whisper, whisper_dir
from omnigpt.generate.whisper import load_waveform, transcribe
from omnigpt.kernels.precision import describe_machine
from omnigpt.text.normalize import normalize_basic, normalize_english, normalize_numbers


def main() -> None:
    from faster_whisper import WhisperModel

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=0, help="first N Asterisk clips only (0 = all 563)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--beam-size", type=int, default=1)
    ap.add_argument("--run", action="append", default=[], help="also score this asr-whisper run (repeatable)")
    args = ap.parse_args()
    print(describe_machine(), flush=True)  # the CPU, its ISA and the peaks measured in this run
    torch.set_num_threads(args.threads)
    model, tok = load_whisper("whisper-tiny.en")
    runs = {Path(r).name: load_run(r) for r in args.run}
    fw = WhisperModel(str(whisper_dir("whisper-tiny.en")), device="cpu", compute_type="default",
                      cpu_threads=args.threads)
    sets = real_recordings(args.limit or None)
    for name, records in sets.items():
        refs, ours, theirs = [], [], []
        extra: dict[str, list[str]] = {name: [] for name in runs}
        t_ours = t_theirs = seconds = 0.0
        same = 0
        for r in records:
            audio = load_waveform(r["audio"])
            seconds += audio.numel() / 16000
            t = time.perf_counter()
            mine = transcribe(model, tok, audio, beam_size=args.beam_size)
            t_ours += time.perf_counter() - t
            t = time.perf_counter()
            segments, _ = fw.transcribe(audio.numpy(), beam_size=args.beam_size, temperature=0.0,
                                        without_timestamps=True)
            segments = list(segments)  # the generator decodes lazily
            t_theirs += time.perf_counter() - t
            same += [s.tokens for s in mine.segments] == [s.tokens for s in segments]
            for run_name, (run_model, run_tok) in runs.items():
                extra[run_name].append(transcribe(run_model, run_tok, audio, beam_size=args.beam_size).text)
            refs.append(r["text"])  # as transcribed: Asterisk's raw line ("28.8", "(1 second of silence)")
            ours.append(mine.text)
            theirs.append("".join(s.text for s in segments))
        print(f"\n{name}: {len(records)} clips, {seconds / 60:.1f} min of audio, {args.threads} threads, "
              f"beam {args.beam_size}; identical token ids {same}/{len(records)}")
        for label, norm in (("basic", normalize_basic), ("numbers", normalize_numbers),
                            ("english", normalize_english)):
            ref = [norm(x) for x in refs]

            def wer(hyps: list[str], ref: list[str] = ref, norm=norm) -> float:
                return word_error_rate([norm(x) for x in hyps], ref, normalize=False)

            w_ours, w_theirs = wer(ours), wer(theirs)
            w_runs = "".join(f"   {n} {100 * wer(extra[n]):5.2f} %" for n in runs)
            print(f"  WER {label:8s} omnigpt {100 * w_ours:5.2f} %   faster-whisper {100 * w_theirs:5.2f} %{w_runs}")
        print(f"  real-time factor      omnigpt {t_ours / seconds:.3f}     faster-whisper {t_theirs / seconds:.3f}"
              f"   (ratio {t_ours / t_theirs:.2f}x)")


if __name__ == "__main__":
    main()
