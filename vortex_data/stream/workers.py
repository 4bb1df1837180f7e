"""How DataLoader worker processes behave: allocator policy and stop signals.

Nothing here changes what a batch contains; it keeps workers fast (freed memory reused) and makes
the main process the one that decides when to stop (Slurm signals every process of a step),
while the main process can still end its workers.
"""

from __future__ import annotations

import os
import signal
import threading

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
    """DataLoader ``worker_init_fn``: a worker ignores stop signals that are not its parent's.

    Slurm signals every process of a step (and a terminal's Ctrl-C the whole process group);
    torch's workers would otherwise die of it, and the main process would crash with 'DataLoader
    worker ... is killed by signal' instead of finishing the step and checkpointing. SIGUSR1 and
    SIGINT are ignored. SIGTERM is taken by a thread that reads who sent it (``sigwaitinfo``):
    from the main process (multiprocessing terminating a worker that did not stop on request, as
    it does at interpreter exit) the worker exits; from anyone else it is ignored. A worker whose
    parent has died exits on its own (torch's watchdog).
    """
    for name in ("SIGUSR1", "SIGINT"):
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
