"""Workers die with their parent: every process omnigpt starts ends when the process that started it ends, however
it ends (SIGKILL, a ``timeout``'s SIGTERM, an exception, a normal return).

- ``process_pool(n)``: a ``ProcessPoolExecutor`` (spawn) whose workers ask the kernel for SIGKILL when their parent
  dies (Linux ``prctl(PR_SET_PDEATHSIG)``, set by the pool's initializer in the worker's main thread, then
  ``os.getppid()`` re-checked: a parent that died before the call is caught too), and that kills its workers at once
  when the ``with`` block ends in an exception (KeyboardInterrupt, one run failing) instead of waiting for them.
- ``run(cmd, ...)`` / ``popen(cmd, ...)``: ``subprocess`` with the same signal set between fork and exec, in a
  process group of its own; ``run`` kills the whole group (grandchildren too) when it returns, times out or raises.
- ``die_with_parent()``: for a process someone else started (a torchrun rank: ``omnigpt train`` calls it).

The kernel sends the signal when the *thread* that forked the child ends, not the process: start children from a
thread that outlives them (``run`` waits in its own thread; a pool's workers are started by the thread that calls
``submit``/``map``, or by the pool's manager thread, both alive while the pool is). A SIGKILLed parent runs no code,
so only its direct children get the signal; a grandchild is ended by its own parent (a torchrun rank by the
agent's death, through ``die_with_parent``) or, on every other exit, by ``run``'s group kill. Off Linux,
``die_with_parent`` (pool workers) polls ``os.getppid()`` each second from a daemon thread instead, and ``run``'s
children have the group kill only.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl  # bound now: a forked child must not dlopen
    except (OSError, AttributeError):
        return None


_prctl = _load_prctl()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent(parent: int | None = None) -> None:
    """SIGKILL this process when its parent ends; end it now if the parent has already ended.

    Call it from the main thread (the setting belongs to the calling thread). ``parent``: the pid that started this
    process (a pool passes its own), which also catches a parent that died before this call; without it, only a
    death after ``os.getppid()`` is read here is caught."""
    expected = os.getppid() if parent is None else parent
    if _prctl is not None:
        if _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")
    else:
        threading.Thread(target=_watch_parent, args=(expected,), daemon=True, name="omnigpt-parent-watch").start()
    if os.getppid() != expected:  # re-parented already: the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)


def watch_parent() -> None:
    """End this process (SIGKILL) within a second of its parent's death, by polling ``os.getppid()`` from a daemon
    thread. For a process whose parent may start it from a short-lived thread (torchrun's agent spawns its ranks
    from worker threads), where ``PR_SET_PDEATHSIG`` would fire when that thread ends, long before the parent does."""
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True, name="omnigpt-parent-watch").start()


def _start_worker(parent: int, initializer: Callable[..., Any] | None, initargs: tuple[Any, ...]) -> None:
    die_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def kill_workers(pool: ProcessPoolExecutor) -> None:
    """SIGKILL the pool's worker processes now (running jobs are lost) and shut it down without waiting."""
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            p.kill()
    pool.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def process_pool(workers: int, initializer: Callable[..., Any] | None = None,
                 initargs: tuple[Any, ...] = ()) -> Iterator[ProcessPoolExecutor]:
    """``with process_pool(n) as pool: pool.map(...)``: ``n`` spawned workers that die with this process.

    A normal exit waits for the submitted work, as ``ProcessPoolExecutor`` does; an exception kills the workers."""
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(os.getpid(), initializer, initargs))
    try:
        yield pool
    except BaseException:
        kill_workers(pool)
        raise
    pool.shutdown(wait=True)


def _arm_child(parent: int) -> None:  # runs in the forked child, before exec: no imports, no allocation-heavy work
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def popen(cmd: Sequence[str] | str, **kwargs: Any) -> subprocess.Popen:
    """``subprocess.Popen`` in a process group of its own, SIGKILLed by the kernel when this process (the calling
    thread) ends first. Kill the group with ``kill_group`` (``run`` does)."""
    if "preexec_fn" in kwargs or "start_new_session" in kwargs or "process_group" in kwargs:
        raise TypeError("popen sets preexec_fn and process_group itself")
    parent = os.getpid()
    return subprocess.Popen(cmd, preexec_fn=lambda: _arm_child(parent), process_group=0, **kwargs)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL every process left in ``proc``'s process group (``popen`` made it its leader)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run(cmd: Sequence[str] | str, *, input: Any = None, capture_output: bool = False, timeout: float | None = None,
        check: bool = False, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run`` through ``popen``: when it returns, times out or raises, the child's whole process group
    is killed (a normal return only ends what the child left behind). Same arguments, results and exceptions."""
    if input is not None:
        kwargs["stdin"] = subprocess.PIPE
    if capture_output:
        kwargs["stdout"] = kwargs["stderr"] = subprocess.PIPE
    with popen(cmd, **kwargs) as proc:
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as e:
            kill_group(proc)
            out, err = proc.communicate()
            raise subprocess.TimeoutExpired(proc.args, e.timeout, output=out, stderr=err) from None
        except BaseException:
            kill_group(proc)
            raise
        kill_group(proc)
        code = proc.wait()
    if check and code:
        raise subprocess.CalledProcessError(code, proc.args, output=out, stderr=err)
    return subprocess.CompletedProcess(proc.args, code, out, err)


__all__ = ["die_with_parent", "kill_group", "kill_workers", "popen", "process_pool", "run", "watch_parent"]
