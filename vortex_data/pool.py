"""Worker pools whose workers die with their parent.

A ``ProcessPoolExecutor`` worker whose parent was killed -9 finishes its queue and then blocks
forever on the pool's pipe. :func:`die_with_parent` as the pool's ``initializer`` asks Linux to
SIGKILL the worker when its parent dies (``PR_SET_PDEATHSIG``); :func:`exit_if_orphaned`, called
at the start of each task, covers the platforms without it and a parent that died before the
worker started.
"""

from __future__ import annotations

import os
import signal
import sys

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
