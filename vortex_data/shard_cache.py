"""One node-local cache of remote shards (``pipe:``, ``http(s)://``), shared by every rank and worker.

Where it lives:

* ``cache_dir`` given to the loader, or ``$VORTEX_SHARD_CACHE``: that folder, kept after the run
  (so the next run on the node starts warm).
* Otherwise a temporary folder ``<$SLURM_TMPDIR or $TMPDIR or /tmp>/vortex-shards-<job>``, where
  ``<job>`` is ``$SLURM_JOB_ID`` (else the user id): every rank of a job on a node computes the
  same name, so they share it. Each loader process registers itself in ``.users/``; the last one to
  exit removes the folder.

One download per shard: a process takes the shard's file lock, and downloads only if the shard is
still absent once it holds the lock; the download goes to a temporary name in the same folder and
is renamed into place (atomic), so nobody ever opens a partial shard. Everyone else waiting on the
lock finds the finished file.

Size limit: ``max_bytes`` (``$VORTEX_SHARD_CACHE_BYTES``, e.g. ``200G``; default half the free space
of the cache's file system at first use). After each download the least recently used shards are
deleted until the cache fits; the shard just fetched is never evicted. A reader that still has an
evicted shard open keeps reading it (POSIX unlink semantics); a later open fetches it again.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

from filelock import FileLock

from .errors import InputError

ENV_DIR = "VORTEX_SHARD_CACHE"
ENV_BYTES = "VORTEX_SHARD_CACHE_BYTES"
DEFAULT_FREE_FRACTION = 0.5
_UNITS = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str) -> int:
    """'512M', '200G', '1.5T' or a plain byte count -> bytes."""
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    try:
        return int(float(t[:-1]) * _UNITS[t[-1]]) if t and t[-1] in _UNITS else int(t)
    except (ValueError, IndexError):
        raise InputError(f"not a size: {text!r} (use e.g. 512M, 200G or a byte count)") from None


def cache_name(url: str) -> str:
    """The cached file's name: a hash of the full URL (two URLs never collide) + its basename."""
    last = url.split("?")[0].split()[-1] if url.split() else url
    base = re.sub(r"[^A-Za-z0-9._-]", "", Path(last).name) or "shard"
    return hashlib.sha1(url.encode()).hexdigest()[:16] + "-" + base


class ShardCache:
    """A cache folder; safe to use from any number of processes at once."""

    def __init__(self, directory: str | os.PathLike, max_bytes: int | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / ".locks").mkdir(exist_ok=True)
        if max_bytes is None and os.environ.get(ENV_BYTES):
            max_bytes = parse_bytes(os.environ[ENV_BYTES])
        if max_bytes is None:
            max_bytes = int(shutil.disk_usage(self.directory).free * DEFAULT_FREE_FRACTION)
        self.max_bytes = max_bytes
        self.downloads = 0
        self.evicted = 0

    def path_for(self, url: str) -> Path:
        return self.directory / cache_name(url)

    def fetch(self, url: str) -> Path:
        """The local copy of ``url``, downloading it first if no process on this node has."""
        dest = self.path_for(url)
        if not dest.exists():
            with FileLock(str(self.directory / ".locks" / (dest.name + ".lock"))):
                if not dest.exists():
                    self._download(url, dest)
                    self.downloads += 1
            self._evict(keep=dest)
        try:
            os.utime(dest)  # mtime = last use, the eviction order
        except FileNotFoundError:  # evicted by another process between the check and now
            return self.fetch(url)
        return dest

    def _download(self, url: str, dest: Path) -> None:
        from webdataset.gopen import gopen

        tmp = self.directory / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            with gopen(url, "rb") as src, open(tmp, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def cached(self) -> list[Path]:
        return [p for p in self.directory.iterdir() if p.is_file() and not p.name.startswith(".")]

    def size(self) -> int:
        return sum(_size(p) for p in self.cached())

    def _evict(self, keep: Path) -> None:
        with FileLock(str(self.directory / ".locks" / "evict.lock")):
            files = sorted(self.cached(), key=_mtime)
            total = sum(_size(p) for p in files)
            for p in files:
                if total <= self.max_bytes:
                    break
                if p == keep:
                    continue
                total -= _size(p)
                p.unlink(missing_ok=True)
                self.evicted += 1


def _size(p: Path) -> int:
    try:
        return p.stat().st_size
    except FileNotFoundError:
        return 0


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except FileNotFoundError:
        return 0.0


# ---------------------------------------------------------------- the per-node default

def default_cache_dir() -> tuple[Path, bool]:
    """(folder, temporary?) for a loader given no cache_dir (see the module docstring)."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR]), False
    base = os.environ.get("SLURM_TMPDIR") or os.environ.get("TMPDIR") or tempfile.gettempdir()
    job = os.environ.get("SLURM_JOB_ID") or f"uid{os.getuid()}"
    return Path(base) / f"vortex-shards-{job}", True


def node_cache_dir(cache_dir: str | os.PathLike | None) -> str:
    """The cache folder a loader process should hand to its workers.

    A temporary default folder is registered to this process and removed at its exit if no
    other live process (another rank, another loader) still uses it. Call it in the process
    that owns the DataLoader, not in its workers (they exit without running atexit hooks).
    """
    if cache_dir is not None:
        return str(cache_dir)
    directory, temporary = default_cache_dir()
    if temporary:
        _register(directory)
    return str(directory)


_REGISTERED: set[Path] = set()


def _guard(directory: Path) -> FileLock:
    # Beside the folder, not in it, so it outlives the folder's removal.
    return FileLock(str(directory) + ".lock")


def _register(directory: Path) -> None:
    if directory in _REGISTERED:
        return
    with _guard(directory):
        (directory / ".users").mkdir(parents=True, exist_ok=True)
        (directory / ".users" / str(os.getpid())).touch()
    _REGISTERED.add(directory)
    atexit.register(release, directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release(directory: Path) -> bool:
    """Unregister this process; remove the folder if no live process is registered. True if removed."""
    _REGISTERED.discard(directory)
    with _guard(directory):
        users = directory / ".users"
        (users / str(os.getpid())).unlink(missing_ok=True)
        others = [p for p in users.glob("*") if p.name.isdigit() and _alive(int(p.name))] if users.is_dir() else []
        if others:
            return False
        shutil.rmtree(directory, ignore_errors=True)
        return True
