"""Running cases: a per-case deadline, a memory cap, outcome classification, failure records, hypothesis loops.

``run_case`` writes a case's files into a directory and calls the reader under

* a deadline (``SIGALRM`` raising ``CaseTimeout``, a ``BaseException`` no reader's ``except Exception`` catches;
  a hang inside C code that never returns to Python is caught by ``scripts/fuzz.py``'s watchdog instead);
* a memory cap (``RLIMIT_AS`` = the process's current size + ``MEMORY_BUDGET``): a reader that trusts a corrupted
  length and allocates gigabytes gets a ``MemoryError`` (or torch's "can't allocate"), recorded as a failure even
  when the reader wraps it into its own error.

Outcomes: ``ok`` (the reader returned), ``refused`` (a clean error), ``fail`` (anything else, with a signature
``kind: exception at file:line`` that groups repeats of one bug).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import resource
import shutil
import signal
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed

from .mutations import Case, cases
from .targets import TARGETS, Target

DEADLINE_S = 10.0  # the seeds load in milliseconds; a case still running after this is a hang
MEMORY_BUDGET = 2 << 30  # bytes a case may add to the process's address space (seeds are < 200 kB)
MEMORY_WORDS = ("MemoryError", "allocate", "out of memory")


class CaseTimeout(BaseException):
    """Raised by the deadline's SIGALRM in whatever Python code the reader is running."""


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise CaseTimeout(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


@contextlib.contextmanager
def memory_cap(extra: int) -> Iterator[None]:
    """Lower the soft RLIMIT_AS to the current size + ``extra`` for the block (raised back afterwards)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = _address_space() + extra
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@dataclass
class Outcome:
    kind: str  # "ok" | "refused" | "fail"
    message: str = ""
    signature: str = ""
    trace: str = ""


def _site(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return "?"
    f = frames[-1]
    parts = Path(f.filename).parts
    short = "/".join(parts[parts.index("site-packages") + 1 :] if "site-packages" in parts else parts[-3:])
    return f"{short}:{f.lineno}"


def write_case(case: Case, directory: Path) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for name, data in case.files.items():
        (directory / name).write_bytes(data)


def run_case(target: Target, case: Case, directory: Path, deadline_s: float = DEADLINE_S,
             memory_budget: int | None = MEMORY_BUDGET) -> Outcome:
    """Run one case in ``directory`` (overwritten) and classify what happened."""
    write_case(case, directory)
    cap = memory_cap(memory_budget) if memory_budget else contextlib.nullcontext()
    try:
        with cap, deadline(deadline_s), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # readers may warn (Pillow on odd TIFF tags, numpy on NaN): allowed
            result = target.run(directory)
        del result
        return Outcome("ok")
    except (KeyboardInterrupt, SystemExit):
        raise
    except CaseTimeout as e:
        return Outcome("fail", str(e), f"hang: {_site(e)}", traceback.format_exc())
    except MemoryError as e:
        return Outcome("fail", str(e)[:300], f"memory: MemoryError at {_site(e)}", traceback.format_exc())
    except BaseException as e:
        message = str(e)
        if any(w in message for w in MEMORY_WORDS):
            return Outcome("fail", message[:500], f"memory: {type(e).__name__} at {_site(e)}",
                           traceback.format_exc())
        why = target.clean(e, directory)
        if why is None:
            return Outcome("refused", message[:500])
        return Outcome("fail", f"{why} | {type(e).__name__}: {message[:300]}", f"{type(e).__name__} at {_site(e)}",
                       traceback.format_exc())


@dataclass
class Tally:
    """Per-reader counts; the first case of every failure signature is saved under ``failures``."""

    reader: str
    failures_dir: Path | None = None
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    signatures: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # signature → message and case description
    refusals: Counter = field(default_factory=Counter)  # the start of each clean error's message (paths cut)

    def add(self, case: Case, outcome: Outcome) -> None:
        self.cases += 1
        self.outcomes[outcome.kind] += 1
        if outcome.kind == "refused":
            self.refusals[re.sub(r"/\S*/case/?", "", outcome.message)[:60]] += 1
        if outcome.kind != "fail":
            return
        self.signatures[outcome.signature] += 1
        if outcome.signature in self.examples:
            return
        self.examples[outcome.signature] = f"{outcome.message}\n  case: {case.describe()[:600]}"
        if self.failures_dir is not None:
            save_failure(self.failures_dir, case, outcome)

    @property
    def failures(self) -> int:
        return self.outcomes["fail"]

    def summary(self) -> str:
        lines = [f"{self.reader}: {self.cases} cases, {self.outcomes['ok']} loaded, {self.outcomes['refused']} "
                 f"refused cleanly, {self.failures} failures ({len(self.signatures)} distinct)"]
        for sig, n in self.signatures.most_common():
            lines.append(f"  {n:6d} × {sig}\n         {self.examples[sig]}")
        return "\n".join(lines)


def save_failure(root: Path, case: Case, outcome: Outcome) -> Path:
    tag = hashlib.sha1(outcome.signature.encode()).hexdigest()[:10]
    d = root / tag
    write_case(case, d / "files")
    (d / "report.txt").write_text(f"signature: {outcome.signature}\nmessage: {outcome.message}\ncase: "
                                  f"{case.describe()}\n\n{outcome.trace}")
    return d


def fuzz(reader: str, examples: int, seed: int, on_case: Callable[[Case, Outcome], None], workdir: Path,
         deadline_s: float = DEADLINE_S, memory_budget: int | None = MEMORY_BUDGET) -> None:
    """``examples`` hypothesis-generated cases of ``reader`` (generation only: failures are recorded, not raised,
    so one bug does not stop the run and nothing is shrunk)."""
    target = TARGETS[reader]
    strategy = cases(target.seeds())

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet, derandomize=False)
    @hypothesis_seed(seed)
    @given(strategy)
    def body(case: Case) -> None:
        on_case(case, run_case(target, case, workdir / "case", deadline_s, memory_budget))

    body()


def fuzz_for(reader: str, seconds: float, seed: int, tally: Tally, workdir: Path,
             progress: Callable[[Tally], None] | None = None, chunk: int = 50) -> Tally:
    """Hypothesis runs of ``chunk`` cases with successive seeds until ``seconds`` have passed."""
    stop = time.monotonic() + seconds
    run = 0
    while time.monotonic() < stop:
        fuzz(reader, chunk, seed * 1_000_003 + run, tally.add, workdir)
        run += 1
        if progress is not None:
            progress(tally)
    return tally
