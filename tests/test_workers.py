"""Workers die with their parent (``omnigpt.files.workers``): a parent that fans out the way omnigpt does — the study's
worker pool on a tiny plan, a subprocess — is SIGKILLed or SIGTERMed (what ``timeout`` sends) and no process it
started is left alive. Descendants are found by a token in their environment, so re-parented orphans count too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from omnigpt.files.workers import popen, process_pool, run

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux")

TOKEN = "OMNIGPT_WORKERS_TEST"


def tagged(tag: str) -> list[int]:
    """Live (not zombie) processes whose environment holds ``TOKEN=tag``."""
    needle = f"{TOKEN}={tag}".encode()
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if needle not in (d / "environ").read_bytes().split(b"\0"):
                continue
            state = (d / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:  # gone, or not ours
            continue
        if state not in ("Z", "X"):
            found.append(int(d.name))
    return found


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def start_parent(code: str, tag: str, tmp_path: Path, script: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, TOKEN: tag, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(script)] if script else [sys.executable, "-c", textwrap.dedent(code)]
    return subprocess.Popen(cmd, env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_and_check(parent: subprocess.Popen, sig: int, tag: str) -> None:
    parent.send_signal(sig)
    parent.wait(10)
    try:
        wait_until(lambda: not tagged(tag), 10, "the parent's children to end")
    finally:
        for pid in tagged(tag):  # leave nothing behind, whatever the outcome
            os.kill(pid, signal.SIGKILL)


STUDY_PARENT = """
    from pathlib import Path
    from omnigpt.study import StudyPlan, run_study
    from omnigpt.study.plan import Size

    corpus = Path("corpus")
    corpus.mkdir()
    for i in range(6):
        (corpus / f"d{i}.txt").write_text(" ".join(["the king", "the queen", "a sword"] * 40) + f" {i}.\\n")
    # Runs that never finish on their own: the workers are mid-training when the parent dies.
    plan = StudyPlan(mode="tiny", sizes=(Size("S", 1, 16, 2),), steps=10**7, batch_size=4, block_size=16, window=4,
                     window_sweep=(), warmup=1, sources=(str(corpus / "*.txt"),), tokenizer="char", val_tokens=256,
                     families=("gpt2", "llama"), seeds=(0,), workers=2)
    run_study("study", plan=plan)
"""


def test_study_workers_die_with_a_sigkilled_parent(tmp_path):
    """The real ``omnigpt study`` fan-out: two pool workers training, the parent SIGKILLed, no worker left."""
    tag = uuid.uuid4().hex
    parent = start_parent(STUDY_PARENT, tag, tmp_path)
    try:
        runs = tmp_path / "study" / "runs"
        wait_until(lambda: len(list(runs.glob("*/recipe.json"))) == 2 or parent.poll() is not None, 60,
                   "both study runs to start training")
        assert parent.poll() is None, parent.communicate()[0]
        workers = [p for p in tagged(tag) if p != parent.pid]
        assert len(workers) >= 2, workers  # the two pool workers (and multiprocessing's resource tracker)
    finally:
        kill_and_check(parent, signal.SIGKILL, tag)
    assert parent.returncode == -signal.SIGKILL


POOL_PARENT = """
    import os, sys, time
    from pathlib import Path
    from omnigpt.files.workers import process_pool

    def job(i):
        Path(f"ready{i}").write_text(str(os.getpid()))
        time.sleep(300)

    if __name__ == "__main__":
        with process_pool(2) as pool:
            futures = [pool.submit(job, i) for i in range(2)]
            time.sleep(300)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_pool_workers_die_with_their_parent(tmp_path, sig):
    """``process_pool`` as the study, data preparation and feature caches use it; SIGTERM is what ``timeout`` sends
    (here to the parent alone: the workers get no signal but their parent's death)."""
    tag = uuid.uuid4().hex
    (tmp_path / "parent.py").write_text(textwrap.dedent(POOL_PARENT))
    parent = start_parent("", tag, tmp_path, script=tmp_path / "parent.py")
    try:
        wait_until(lambda: all((tmp_path / f"ready{i}").exists() for i in range(2)) or parent.poll() is not None,
                   30, "both workers to run their job")
        assert parent.poll() is None, parent.communicate()[0]
        workers = [int((tmp_path / f"ready{i}").read_text()) for i in range(2)]
        assert all(alive(w) for w in workers)
    finally:
        kill_and_check(parent, sig, tag)
    assert parent.returncode == -sig and not any(alive(w) for w in workers)


SUBPROCESS_PARENT = """
    import sys, time
    from omnigpt.files.workers import popen
    child = popen(["sleep", "300"])
    print(child.pid, flush=True)
    time.sleep(300)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_subprocess_dies_with_its_parent(tmp_path, sig):
    tag = uuid.uuid4().hex
    parent = start_parent(SUBPROCESS_PARENT, tag, tmp_path)
    child = int(parent.stdout.readline())
    assert alive(child)
    kill_and_check(parent, sig, tag)
    assert not alive(child)


def test_a_worker_whose_parent_already_died_ends_itself():
    """The race closed: the signal armed after the parent died (here: a ``parent`` pid that is not ours)."""
    code = "from omnigpt.files.workers import die_with_parent; die_with_parent(1); print('still alive')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL and "still alive" not in done.stdout


def test_run_kills_the_whole_group():
    # A grandchild left behind by a child that returned is ended with it.
    out = run(["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True)
    grandchild = int(out.stdout)
    wait_until(lambda: not alive(grandchild), 10, "the grandchild to end")
    # On a timeout: the child and its grandchild (found by the token: the child may not have printed yet).
    tag = uuid.uuid4().hex
    with pytest.raises(subprocess.TimeoutExpired):
        run(["sh", "-c", "sleep 300 & sleep 300; wait"], capture_output=True, timeout=1, env={**os.environ, TOKEN: tag})
    wait_until(lambda: not tagged(tag), 10, "the child and grandchild to end")
    # Same results and errors as subprocess.run.
    assert run(["sh", "-c", "printf hi; exit 0"], capture_output=True).stdout == b"hi"
    assert run(["cat"], input="x", capture_output=True, text=True).stdout == "x"
    with pytest.raises(subprocess.CalledProcessError):
        run(["false"], check=True)
    with pytest.raises(TypeError):
        popen(["true"], preexec_fn=None)


def test_pool_kills_its_workers_on_an_exception():
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="stop"), process_pool(2) as pool:
        futures = [pool.submit(time.sleep, 300) for _ in range(2)]
        wait_until(lambda: all(f.running() for f in futures), 30, "the workers to start")
        procs = list(pool._processes.values())
        raise RuntimeError("stop")
    wait_until(lambda: not any(alive(p.pid) for p in procs), 10, "the workers to end")
    assert time.monotonic() - t0 < 30
    with process_pool(2) as pool:  # and a normal exit returns the results
        assert list(pool.map(abs, [-1, -2, 3])) == [1, 2, 3]
