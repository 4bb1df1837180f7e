"""The sample-index folders of a node's cache (``<cache>/.index/<hash>``): how one is written,
checked, held by a live loader, reclaimed after a killed build and evicted.

:mod:`.sample_index` decides what goes in a folder and when to build it; :mod:`.shard_cache`
counts the folders in the cache's size and evicts them. Both go through this module, so the
rules below hold in one place:

1. A folder is built under its build lock (``<cache>/.locks/index-<hash>.lock``) into a
   temporary folder ``<hash>.tmp-<host>-<pid>`` beside it, each file through a locked temporary
   (temporaries.py: a failed write names its file), ``meta.json`` last, then renamed into place.
2. ``meta.json`` records each file's size and XXH3-64 and its own; :func:`folder_problem` checks
   them all (a folder cut short or changed is built again instead of mapped).
3. A loader holds a shared ``flock`` on the folder's ``meta.json`` while it uses the folder;
   eviction takes the build lock and an exclusive ``flock`` without waiting, and skips the folder
   when either is taken.
4. A temporary whose build lock is free belongs to a process that is gone: it is removed.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import xxhash
from filelock import FileLock, Timeout

from ..temporaries import ABANDONED_AFTER_S, final_name, locked_temp, temp_path, writer_tag

log = logging.getLogger(__name__)


def folder_problem(d: Path, fmt: int, arrays: Sequence[str]) -> str | None:
    """None if ``d`` is a complete index folder whose files have the sizes and XXH3-64 sums its
    ``meta.json`` records (and meta.json its own); else what is wrong ("absent" if there is no
    folder). Hashing the ~110 MB of a 1M-sample folder from the page cache took ~50 ms on a
    shared 2-core machine, once per loader start."""
    try:
        meta = json.loads((d / "meta.json").read_bytes())
    except FileNotFoundError:
        return "absent"
    except (OSError, ValueError) as e:
        return f"has an unreadable meta.json ({e})"
    if not isinstance(meta, dict) or meta.get("format") != fmt or not isinstance(meta.get("files"), dict):
        return "was written by another version"
    if meta.get("self") != _meta_sum(meta):
        return "has a meta.json that was changed after it was written"
    for k in arrays:
        size, digest = meta["files"].get(f"{k}.npy", (None, None))
        f = d / f"{k}.npy"
        try:
            got = f.stat().st_size
        except OSError:
            return f"lacks {f.name}"
        if got != size:
            return f"has {f.name} of {got} bytes, not the {size} it was written with"
        h = xxhash.xxh3_64()
        with open(f, "rb") as fh:
            while block := fh.read(1 << 22):
                h.update(block)
        if h.hexdigest() != digest:
            return f"has {f.name} changed since it was written (XXH3-64 {h.hexdigest()}, not {digest})"
    return None


def _meta_sum(meta: dict[str, Any]) -> str:
    return xxhash.xxh3_64_hexdigest(json.dumps({k: v for k, v in meta.items() if k != "self"}, sort_keys=True).encode())


def write_folder(d: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write ``arrays`` (name -> array, as ``<name>.npy``) and ``meta.json`` into a temporary folder
    beside ``d`` and rename it to ``d`` (the caller holds ``d``'s build lock). Each file goes
    through a locked temporary, so a failed write (a full disk) names the file it was writing."""
    tmp = temp_path(d, writer_tag())
    tmp.mkdir(parents=True)
    try:
        files = {}
        for k in arrays:
            a = np.ascontiguousarray(arrays[k])
            h = xxhash.xxh3_64()
            with locked_temp(tmp / f"{k}.npy") as f:
                for part in (_npy_header(a), memoryview(a).cast("B")):  # what np.save writes
                    f.write(part)
                    h.update(part)
            files[f"{k}.npy"] = [(tmp / f"{k}.npy").stat().st_size, h.hexdigest()]
        meta = {**meta, "files": files}
        meta["self"] = _meta_sum(meta)
        with locked_temp(tmp / "meta.json") as f:  # written last: its presence means complete
            f.write(json.dumps(meta).encode())
        os.rename(tmp, d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _npy_header(a: np.ndarray) -> bytes:
    # np.save on a file writes through ndarray.tofile, whose failure on a full disk ("63000
    # requested and 28544 written") is an OSError without errno or file name; writing the same
    # bytes ourselves gives the system's error, which locked_temp then names.
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(a))
    return buf.getvalue()  # magic, version and header


def remove_folder(d: Path) -> None:
    """Remove a damaged ``d`` and the temporaries of ``d`` (the caller holds its build lock, so
    nobody is writing them)."""
    shutil.rmtree(d, ignore_errors=True)
    for p in d.parent.glob(f"{d.name}.tmp-*"):
        if final_name(p.name) == d.name:
            shutil.rmtree(p, ignore_errors=True)


def index_folders(root: str | os.PathLike) -> list[Path]:
    """The finished index folders of a cache root (not temporaries, not lock files)."""
    top = Path(root) / ".index"
    try:
        return [p for p in top.iterdir() if p.is_dir() and final_name(p.name) is None and not p.name.startswith(".")]
    except FileNotFoundError:
        return []


def folder_bytes(d: Path) -> int:
    total = 0
    for f in d.glob("*"):
        try:
            total += f.stat().st_size
        except OSError:
            pass
    return total


def remove_index_folder(d: Path) -> bool:
    """Evict an index folder unless a loader holds it or a process is building it. True if removed."""
    lock = FileLock(str(index_build_lock(d)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    try:
        try:
            fd = os.open(d / "meta.json", os.O_RDONLY)
        except FileNotFoundError:
            fd = None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False  # a live SourceIndex maps it
            except OSError:
                pass  # no flock on this file system: eviction order alone decides
        shutil.rmtree(d, ignore_errors=True)
        if fd is not None:
            os.close(fd)
        return True
    finally:
        lock.release()


def remove_abandoned_index_temporaries(root: str | os.PathLike) -> int:
    """Remove index temporaries whose builder is gone (its build lock is free): ``<hash>.tmp-*``
    folders a killed process left, and ``.tmp-*`` ones of older versions an hour after their last
    write. Returns how many were removed."""
    top, removed = Path(root) / ".index", 0
    try:
        entries = list(top.iterdir())
    except FileNotFoundError:
        return 0
    for p in entries:
        if not p.is_dir():
            continue
        final = final_name(p.name)
        if p.name.startswith(".tmp-"):  # an older version's mkdtemp(prefix=".tmp-"): no lock to ask
            try:
                if time.time() - p.stat().st_mtime < ABANDONED_AFTER_S:
                    continue
            except OSError:
                continue
            shutil.rmtree(p, ignore_errors=True)
            removed += 1
            continue
        if final is None:
            continue
        lock = FileLock(str(index_build_lock(top / final)))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            continue  # being built now
        try:
            shutil.rmtree(p, ignore_errors=True)
            removed += 1
        finally:
            lock.release()
    return removed


def index_build_lock(d: Path) -> Path:
    """``<root>/.locks/index-<hash>.lock`` (beside the shards' locks; no shard is named so)."""
    (d.parent.parent / ".locks").mkdir(parents=True, exist_ok=True)
    return d.parent.parent / ".locks" / f"index-{d.name}.lock"


class Held:
    """A shared ``flock`` on a folder's ``meta.json`` (rule 3), released when this object goes."""

    def __init__(self, fd: int):
        self.fd = fd

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def hold_index_folder(d: Path) -> Held | None:
    """A hold on ``d`` (None if it has no meta.json, or it is being evicted right now). Checked to
    be the file now at that path, not one evicted meanwhile."""
    try:
        fd = os.open(d / "meta.json", os.O_RDONLY)
    except OSError:
        return None
    held = Held(fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return None
    except OSError:
        pass  # no flock on this file system: eviction order alone decides
    try:
        return held if os.fstat(fd).st_ino == os.stat(d / "meta.json").st_ino else None
    except OSError:
        return None


def open_folder(d: Path, fmt: int, names: Sequence[str], build: Callable[[], tuple[dict, dict]],
                source: str) -> tuple[Held | None, bool]:
    """(a hold on folder ``d``, built now?): ``d`` checked (rule 2) and held (rule 3); built with
    ``build() -> (arrays, meta)`` (rule 1) when absent or failing its check, which is named in a
    warning. ``source``: what it is built from, for that warning."""
    held = hold_index_folder(d)
    if held is not None and folder_problem(d, fmt, names) is None:
        _used(d)
        return held, False
    del held
    with FileLock(str(index_build_lock(d))):
        problem = folder_problem(d, fmt, names)
        if problem is not None:
            if problem != "absent":
                log.warning("%s: sample-index cache folder %s; building it again from %s", d, problem, source)
            remove_folder(d)
            arrays, meta = build()
            write_folder(d, {k: arrays[k] for k in names}, meta)
            del arrays
            from .workers import return_freed_memory

            return_freed_memory()
        _used(d)
        return hold_index_folder(d), problem is not None


def _used(d: Path) -> None:
    """The folder's mtime is its last use: the eviction order."""
    try:
        os.utime(d)
    except OSError:
        pass
