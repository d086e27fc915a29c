"""Fuzz omnigpt's readers of untrusted files for minutes (issue 24); the harness lives in tests/fuzz/.

    .venv/bin/python scripts/fuzz.py --minutes 3                   # every reader, 3 minutes each
    .venv/bin/python scripts/fuzz.py --minutes 1 --reader gguf     # one reader (repeat --reader for more)
    .venv/bin/python scripts/fuzz.py --replay runs/fuzz/gguf/failures/<id> --reader gguf

Readers: gguf, ctranslate2, torchvision, safetensors (config.json + model.safetensors), image, audio (the server's
upload decoders). Each reader runs in one worker process at a time (hypothesis generates the cases; a case gets a
10 s deadline and a 2 GiB address-space budget in the worker). This parent is the watchdog: a worker whose case
files have not changed for deadline + 20 s is stuck in C code and is killed, a worker that dies (a segfault) is
recorded, and either way a fresh worker carries on for the time left. The first case of every distinct failure is
saved under ``--out`` (default runs/fuzz/) with its files and a report; the summary lists cases run and failures
per reader, and the exit status is 1 when there was any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the harness package tests/fuzz (ahead of this script's own name)

READERS = ("gguf", "ctranslate2", "torchvision", "safetensors", "image", "audio")
STALL_S = 20.0  # beyond the per-case deadline, how long case files may stay unchanged before the worker is killed


def _worker(reader: str, seconds: float, out: Path, seed: int) -> None:
    """Run hypothesis chunks until ``seconds`` pass, printing the cumulative tally as a JSON line after each."""
    import torch
    from fuzz.harness import Tally, fuzz_for

    torch.set_num_threads(1)  # a fuzz case is tiny; threads would only contend with the machine's other work
    tally = Tally(reader, out / reader / "failures")

    def report(t: Tally) -> None:
        print(json.dumps({"cases": t.cases, "outcomes": dict(t.outcomes), "signatures": dict(t.signatures),
                          "examples": t.examples, "refusals": dict(t.refusals.most_common(12))}), flush=True)

    fuzz_for(reader, seconds, seed, tally, out / reader, progress=report, chunk=25)


def _newest_change(directory: Path) -> float:
    try:
        return max((p.stat().st_mtime for p in directory.iterdir()), default=0.0)
    except OSError:
        return 0.0


def _run_reader(reader: str, seconds: float, out: Path, seed: int, deadline_s: float) -> dict:
    """Workers for ``reader`` until ``seconds`` are used; returns the merged tally (plus watchdog findings)."""
    total: dict = {"cases": 0, "outcomes": Counter(), "signatures": Counter(), "examples": {}, "refusals": Counter()}
    stop = time.monotonic() + seconds
    case_dir = out / reader / "case"
    restarts = 0
    while (left := stop - time.monotonic()) > 5:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", reader, "--seconds", f"{left:.1f}",
               "--out", str(out), "--seed", str(seed + 7919 * restarts)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
        last: dict = {}
        changed = time.time()  # the latest case-file write seen (the directory is briefly absent between cases)
        problem = None
        while True:
            ready, _, _ = select.select([proc.stdout], [], [], 1.0)
            if ready:
                line = proc.stdout.readline()
                if not line:
                    break  # the worker ended
                last = json.loads(line)
            changed = max(changed, _newest_change(case_dir))
            if proc.poll() is None and time.time() - changed > deadline_s + STALL_S:
                problem = f"hang (watchdog): no case finished for {deadline_s + STALL_S:.0f} s"
                os.kill(proc.pid, 9)
                break
        code = proc.wait()
        if problem is None and code != 0:
            problem = f"crash: worker exited with {'signal ' + str(-code) if code < 0 else 'status ' + str(code)}"
        total["cases"] += last.get("cases", 0)
        for key in ("outcomes", "signatures", "refusals"):
            total[key].update(last.get(key, {}))
        for sig, example in last.get("examples", {}).items():
            total["examples"].setdefault(sig, example)
        if problem is None:
            break
        # The case being run when the worker hung or died is still in case_dir: keep it.
        restarts += 1
        total["cases"] += 1
        total["outcomes"]["fail"] += 1
        total["signatures"][problem] += 1
        kept = out / reader / "failures" / f"watchdog-{restarts}"
        if case_dir.exists():
            shutil.rmtree(kept, ignore_errors=True)
            shutil.copytree(case_dir, kept / "files")
            (kept / "report.txt").write_text(f"signature: {problem}\n(the files the worker was reading)\n")
        total["examples"].setdefault(problem, f"case files kept in {kept}")
    return total


def _summary(reader: str, t: dict) -> str:
    o = t["outcomes"]
    lines = [f"{reader}: {t['cases']} cases, {o.get('ok', 0)} loaded, {o.get('refused', 0)} refused cleanly, "
             f"{o.get('fail', 0)} failures ({len(t['signatures'])} distinct)"]
    for sig, n in Counter(t["signatures"]).most_common():
        lines.append(f"  {n:6d} × {sig}\n         {t['examples'].get(sig, '')}")
    return "\n".join(lines)


def _replay(reader: str, directory: Path) -> int:
    import traceback

    from fuzz.targets import TARGETS

    files = directory / "files" if (directory / "files").is_dir() else directory
    try:
        TARGETS[reader].run(files)
    except BaseException as e:  # noqa: BLE001 (showing whatever the reader raised is the point)
        traceback.print_exc()
        why = TARGETS[reader].clean(e, files)
        print(f"\n{reader}: {'clean refusal' if why is None else 'FAILURE: ' + why}")
        return 0 if why is None else 1
    print(f"{reader}: loaded")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=1.0, help="fuzzing time per reader (default 1)")
    ap.add_argument("--reader", action="append", choices=READERS, help="reader(s) to fuzz (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "fuzz", help="failures and the report go here")
    ap.add_argument("--seed", type=int, default=None, help="hypothesis seed (default: random, printed)")
    ap.add_argument("--replay", type=Path, help="run one saved case directory through --reader and show the result")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker, args.seconds, args.out, args.seed)
        return 0
    if args.replay:
        if not args.reader or len(args.reader) != 1:
            ap.error("--replay needs one --reader")
        return _replay(args.reader[0], args.replay)
    from fuzz.harness import DEADLINE_S

    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "little")
    readers = args.reader or list(READERS)
    print(f"fuzzing {', '.join(readers)} for {args.minutes:g} min each (seed {seed}); failures go to {args.out}",
          flush=True)
    results = {}
    for reader in readers:
        t0 = time.monotonic()
        results[reader] = _run_reader(reader, args.minutes * 60, args.out, seed, DEADLINE_S)
        print(f"[{time.monotonic() - t0:.0f} s] {_summary(reader, results[reader])}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps({"seed": seed, "minutes": args.minutes, "readers": results},
                                                     indent=1, default=dict) + "\n")
    print("\ncases run / failures per reader: " + ", ".join(
        f"{r} {t['cases']}/{t['outcomes'].get('fail', 0)}" for r, t in results.items()))
    return 1 if any(t["outcomes"].get("fail", 0) for t in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
