"""How the loader's processes behave: allocator policy and stop signals.

Nothing here changes what a batch contains; it keeps workers fast (freed memory reused), gives a
one-off job's memory back in the main process (:func:`return_freed_memory`) and makes
the main process the one that decides when to stop (Slurm signals every process of a step),
while the main process can still end its workers.
"""

from __future__ import annotations

import gc
import os
import re
import signal
import threading
from typing import Any, Iterable, Iterator

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Make glibc's allocator keep freed memory for reuse instead of returning it to the OS.

    Decoding and augmenting allocate and free several MB per sample; by default blocks that big
    are fresh ``mmap``s, so every sample pays page faults on all of them (the same colour jitter
    runs in about half the CPU time once the memory is reused). Called in DataLoader workers
    (and by ``bench-loader``); RSS then stays at its high-water mark, flat across epochs.
    Returns False where there is no glibc ``mallopt``.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def return_freed_memory() -> None:
    """Give the memory a one-off job freed (building a mapped index: ~110 MB at 1M samples) back
    to the system: Arrow's pool and glibc's heap (``malloc_trim``) would otherwise keep it in the
    main process for the rest of the run."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a worker ignores stop signals that are not its parent's.

    Slurm signals every process of a step (and a terminal's Ctrl-C the whole process group);
    torch's workers would otherwise die of it, and the main process would crash with 'DataLoader
    worker ... is killed by signal' instead of finishing the step and checkpointing. SIGUSR1,
    SIGINT and SIGHUP are ignored. SIGTERM is taken by a thread that reads who sent it (``sigwaitinfo``):
    from the main process (multiprocessing terminating a worker that did not stop on request, as
    it does at interpreter exit) the worker exits; from anyone else it is ignored. A worker whose
    parent has died exits on its own (torch's watchdog).
    """
    for name in ("SIGUSR1", "SIGINT", "SIGHUP"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):  # no way to see the sender here: ignore SIGTERM too
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started now inherit the mask
    threading.Thread(target=_sigterm_from_parent_only, args=(os.getppid(),), daemon=True,
                     name="vortex-sigterm").start()


def _sigterm_from_parent_only(parent: int) -> None:
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            # Exit 0: torch's SIGCHLD check in the main process takes any other status (or death
            # by a signal) for a crashed worker and raises, even inside multiprocessing's exit hook.
            os._exit(0)


_WRAPPED = re.compile(r"\ACaught \w+ (in DataLoader worker process \d+)\.\nOriginal Traceback")


def unwrapped(e: BaseException) -> BaseException | None:
    """The error a DataLoader worker raised, with its own message again, or None if ``e`` is not one.

    torch re-raises a worker's exception as the same type with the message 'Caught SampleError in
    DataLoader worker process 0.' followed by the worker's traceback as text, so the first line
    (what STATUS and a one-line error show) would lose the cause. The message becomes the worker's
    own, plus which worker; raise the result ``from e`` to keep the worker's traceback.
    """
    cls = type(e)
    text = str(e.args[0]) if len(e.args) == 1 else ""
    m = _WRAPPED.match(text)
    if m is None or cls is KeyError:  # (torch already shows a KeyError's text; its str() would quote ours)
        return None
    name = cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"
    head = "\n" + name + ": "
    at = text.rfind(head)
    if at < 0:
        return None
    try:
        return cls(f"{text[at + len(head):].rstrip()} ({m.group(1)})")
    except Exception:  # noqa: BLE001 -- a type that takes other arguments: keep torch's form
        return None


_WORKER_ERRORS: list[str] = []
"""Errors a loader iterator ended in since the last collection (see :func:`reraise_worker_errors`)."""


def reraise_worker_errors(batches: Iterable[Any]) -> Iterator[Any]:
    """``batches``, with a worker's error re-raised under its own message (:func:`unwrapped`).

    After a worker's error, collects cyclic garbage first, in this process: the iterator that
    ended in it (the caught error's traceback holds it in a cycle) would otherwise be inherited by
    the workers ``iter(batches)`` forks and collected there, where its shutdown fails with
    "Exception ignored ... can only test a child process". Only then: a full collection in a
    large training process costs tens to hundreds of milliseconds at every epoch's start."""
    if _WORKER_ERRORS:
        _WORKER_ERRORS.clear()
        gc.collect()
    it = iter(batches)
    while True:
        try:
            b = next(it)
        except StopIteration:
            return
        except Exception as e:
            _WORKER_ERRORS.append(type(e).__name__)
            original = unwrapped(e)
            if original is None:
                raise
            raise original from e
        yield b
