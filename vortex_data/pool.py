"""Worker pools whose workers die with their parent.

A ``ProcessPoolExecutor`` worker whose parent was killed -9 finishes its queue and then blocks
forever on the pool's pipe. :func:`die_with_parent` as the pool's ``initializer`` asks Linux to
SIGKILL the worker when its parent dies (``PR_SET_PDEATHSIG``); :func:`exit_if_orphaned`, called
at the start of each task, covers the platforms without it and a parent that died before the
worker started.

:func:`worker_pool` is the pool the package's commands use. Its workers take Ctrl-C (the terminal
sends SIGINT to the whole process group) only inside a task, which ends as Ctrl-C would end it;
between tasks they note it, and the tasks still queued end at once. The parent, on Ctrl-C or an
error, cancels the queued tasks and interrupts the running ones (:meth:`WorkerPool.stop`)
instead of letting the pool run every queued task first.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable, Iterator

_PARENT_PID: int | None = None
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Pool ``initializer`` (``initargs=(os.getpid(),)``): this worker dies with ``parent_pid``."""
    global _PARENT_PID
    _PARENT_PID = parent_pid
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # exit_if_orphaned still stops the worker at its next task
    exit_if_orphaned()  # the parent may have died before prctl took effect


def exit_if_orphaned() -> None:
    """End this worker now if the parent it was started by is gone."""
    if _PARENT_PID is not None and os.getppid() != _PARENT_PID:
        os._exit(1)


_STOPPING = False
"""In a worker: a stop was asked for (SIGINT); tasks that start from now on end at once."""
_IN_TASK = False


def _start_worker(parent_pid: int) -> None:
    signal.signal(signal.SIGINT, _on_sigint)
    die_with_parent(parent_pid)


def _on_sigint(signum: int, frame: object) -> None:
    # Ctrl-C reaches the whole process group, and WorkerPool.stop sends it too. Raised only inside
    # a task: between tasks the worker is reading the pool's queue, and dying there (or being
    # killed anywhere) can leave that queue half-read and the parent waiting on it forever.
    global _STOPPING
    _STOPPING = True
    if _IN_TASK:
        raise KeyboardInterrupt


def _run_task(fn: Callable[..., Any], *args: Any) -> Any:
    global _IN_TASK
    exit_if_orphaned()
    if _STOPPING:
        raise KeyboardInterrupt  # queued before the stop: not started
    _IN_TASK = True
    try:
        return fn(*args)
    finally:
        _IN_TASK = False


class WorkerPool:
    """A ``ProcessPoolExecutor`` (see :func:`worker_pool`); ``submit(fn, *args)`` as its own."""

    def __init__(self, workers: int, mp_context: Any = None):
        self.executor = ProcessPoolExecutor(max_workers=workers, mp_context=mp_context, initializer=_start_worker,
                                            initargs=(os.getpid(),))
        self.futures: list[Future] = []

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        fut = self.executor.submit(_run_task, fn, *args)
        self.futures.append(fut)
        return fut

    def stop(self, timeout_s: float = 30.0) -> None:
        """Cancel the queued tasks and interrupt the running ones (SIGINT to each worker: a task
        ends as Ctrl-C would end it, its cleanup runs), then wait for the workers to be idle."""
        ex = self.executor
        procs = list((getattr(ex, "_processes", None) or {}).values())  # the public API has no worker list
        ex.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            try:
                os.kill(p.pid, signal.SIGINT)
            except (OSError, TypeError):
                pass  # already gone
        # Not futures.wait(): a future the executor cancels is done() but never "notified", and
        # wait() would sit out its timeout on it.
        deadline = time.monotonic() + timeout_s
        while not all(f.done() for f in self.futures) and time.monotonic() < deadline:
            time.sleep(0.02)
        ex.shutdown(wait=True)


@contextlib.contextmanager
def worker_pool(workers: int, mp_context: Any = None) -> Iterator[WorkerPool]:
    """Worker processes that die with their parent. Leaving the block normally waits for every
    task; leaving it by an exception (Ctrl-C, a task's error) stops the pool at once
    (:meth:`WorkerPool.stop`) instead of running every queued task first."""
    pool = WorkerPool(workers, mp_context)
    try:
        yield pool
    except BaseException:
        pool.stop()
        raise
    pool.executor.shutdown(wait=True)
