"""Temporary files that concurrent writers (SLURM array tasks, pool workers) can tell apart.

A temporary is named ``<final name>.tmp-<writer tag>`` (task index, host, pid) and is held under
an exclusive ``flock`` from creation until it has been renamed to its final name, so another
process can prove it abandoned: the lock is free. Some shared file systems do not carry flock
between nodes, so a temporary that is not this task's own is removed only when its lock is free
*and* it has not been written to for :data:`ABANDONED_AFTER_S` seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import socket
import time
from pathlib import Path
from typing import BinaryIO, Iterator, NoReturn

from .errors import InputError

ABANDONED_AFTER_S = 3600.0
"""A live writer appends to its temporary at least once per frame; an hour of silence is death."""
TMP_MARK = ".tmp-"


def writer_tag(task_index: int | None = None) -> str:
    """``t<task>-<host>-<pid>`` (``<host>-<pid>`` outside a task): unique among live writers."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"
    base = f"{host}-{os.getpid()}"
    return base if task_index is None else f"t{task_index}-{base}"


def temp_path(final: Path, tag: str | None = None) -> Path:
    return final.with_name(f"{final.name}{TMP_MARK}{tag or writer_tag()}")


def final_name(tmp_name: str) -> str | None:
    """The final file name a temporary will be renamed to, or None if it is not a temporary."""
    i = tmp_name.rfind(TMP_MARK)
    return tmp_name[:i] if i > 0 else None


class LockedTemp:
    """A locked temporary for ``final``: write to ``file``, then :meth:`commit` (fsync, rename into
    place, and only then unlock, so no one sees it unlocked under its temporary name) or
    :meth:`discard`."""

    def __init__(self, final: Path, tag: str | None = None):
        self.final, self.path = final, temp_path(final, tag)
        self.file: BinaryIO = open(self.path, "wb")
        _try_lock(self.file)

    def commit(self) -> None:
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            os.replace(self.path, self.final)
        except BaseException:
            self.discard()
            raise
        self.file.close()

    def discard(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass  # flushing what is thrown away (a full disk fails that flush too) does not matter
        self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def locked_temp(final: Path, tag: str | None = None) -> Iterator[BinaryIO]:
    """A :class:`LockedTemp`'s file, committed when the block ends, discarded on an exception."""
    temp = LockedTemp(final, tag)
    try:
        yield temp.file
    except BaseException as e:
        temp.discard()
        reraise_naming(e, temp.path)
    try:
        temp.commit()
    except OSError as e:
        reraise_naming(e, temp.path)


@contextlib.contextmanager
def output_file(final: Path, option: str = "--out") -> Iterator[BinaryIO]:
    """A file the user named (``option``), written whole or not at all: its folder is made, the
    bytes go to a locked temporary beside it and are renamed into place when the block ends; an
    exception in the block removes the temporary, so a failed export leaves no partial file.

    A folder that cannot be written (read-only, a path under a regular file, a full disk) raises
    one InputError line naming ``final``, the system's reason and the option to change; it is
    raised on entry, before any work, when the folder or the temporary cannot be made."""
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = LockedTemp(final)
    except OSError as e:
        raise _unwritable(final, e, option) from None
    try:
        yield temp.file
    except BaseException as e:
        temp.discard()
        reraise_naming(e, final)
    try:
        temp.commit()
    except OSError as e:
        raise _unwritable(final, e, option) from None


def _unwritable(final: Path, e: OSError, option: str) -> InputError:
    blocker = next((p for p in final.parents if p.exists()), None)
    if blocker is not None and not blocker.is_dir():  # mkdir says only "File exists" or "Not a directory"
        why = f"{blocker} is a file, not a folder"
    else:
        # Name the part of the path that failed, if another one, but never our temporary.
        seen = str(e.filename or "")
        other = seen and seen != str(final) and final_name(Path(seen).name) != final.name
        why = f"{e.strerror or e}" + (f" ({seen})" if other else "")
    return InputError(f"{final}: cannot write it: {why}; give {option} a path in a writable folder")


def reraise_naming(e: BaseException, path: Path | str) -> NoReturn:
    """Raise ``e``, as an OSError naming ``path`` if it is one that names no file: a failed write
    or fsync (a full disk: '[Errno 28] No space left on device') does not say which file it was
    writing. Call it in the ``except`` block that caught ``e``."""
    if isinstance(e, OSError) and e.filename is None and e.errno is not None:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    raise e


def _try_lock(f: BinaryIO) -> bool:
    """Take an exclusive non-blocking flock; False if another process holds it. File systems
    without flock (ENOLCK, EOPNOTSUPP) count as unlocked: the age test then decides."""
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def is_locked(path: Path) -> bool:
    """Whether a live process holds the temporary's lock (False if it is gone or unlocked)."""
    try:
        with open(path, "rb") as f:
            return not _try_lock(f)
    except OSError:
        return False


def remove_if_abandoned(path: Path, own: bool, max_age_s: float = ABANDONED_AFTER_S) -> bool:
    """Delete a temporary nobody is writing. ``own``: it belongs to this task's work, so only a
    live lock spares it; otherwise it must also be older than ``max_age_s``. True if removed."""
    if is_locked(path):
        return False
    if not own:
        try:
            if time.time() - path.stat().st_mtime < max_age_s:
                return False
        except OSError:
            return False
    path.unlink(missing_ok=True)
    return True
