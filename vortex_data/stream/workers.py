"""How DataLoader worker processes behave: allocator policy, stop signals, shutdown at exit.

Nothing here changes what a batch contains; it keeps workers fast (freed memory reused), makes
the main process the one that decides when to stop (Slurm signals every process of a step), and
stops persistent workers before interpreter exit.
"""

from __future__ import annotations

import atexit
import multiprocessing.util  # noqa: F401  (its exit hook must be registered before ours, below)
import signal
import weakref
from typing import Any

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


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGTERM/SIGUSR1/SIGINT, the main process decides.

    Slurm signals every process of a step (and a terminal's Ctrl-C the whole process group);
    torch's workers would otherwise die of it, and the main process would crash with 'DataLoader
    worker ... is killed by signal' instead of finishing the step and checkpointing. Workers still
    end when the main process shuts them down, and a worker whose parent has died exits on its
    own (torch's watchdog).
    """
    for name in ("SIGTERM", "SIGUSR1", "SIGINT"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)


_LIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()


def close_at_exit(loader: Any) -> None:
    """Have ``loader.close()`` called at interpreter exit (it holds persistent workers)."""
    _LIVE.add(loader)


@atexit.register  # registered after multiprocessing's own exit hook, so it runs before it
def _close_live_loaders() -> None:
    """Workers ignore SIGTERM (above), so multiprocessing's exit hook, which terminates daemon
    children with SIGTERM and then joins them, would wait forever on a loader nobody closed."""
    for loader in list(_LIVE):
        loader.close()
