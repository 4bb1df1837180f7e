"""One node-local cache of remote shards (``pipe:``, ``http(s)://``), shared by every rank and worker.

Where it lives: ``cache_dir`` (or ``$VORTEX_SHARD_CACHE``), a folder that is kept (a warm restart).
Otherwise a temporary folder ``<$SLURM_TMPDIR or $TMPDIR or /tmp>/vortex-shards-<job>``, where
``<job>`` is ``$SLURM_JOB_ID`` (else the user id): every rank of a job on a node computes the
same name, so they share it. Each loader process registers itself in ``.users/``; the last one to
exit removes the folder.

One download per shard: a process takes the shard's file lock, and downloads only if the shard is
still absent once it holds the lock; the download goes to a temporary name in the same folder and
is renamed into place (atomic), so nobody ever opens a partial shard. Everyone else waiting on the
lock finds the finished file.

Checked against the manifest: given the manifest's size and sha256 of a shard, a download is
hashed as it streams and kept only if both match (one retry, then ShardReadError naming the URL);
a cached copy is used only if its size and the sha256 recorded when it was fetched (or, for a
copy without a record, its sha256 computed once) match, and is fetched again otherwise. The
record holds the copy's inode and ctime too (a write changes the ctime), so a copy changed in
place is hashed again. Damage without a write is caught by the loader's per-member checksums;
the reader then asks :meth:`ShardCache.refetch`: a copy unlike the manifest is fetched again once.

Temporaries of killed downloads (``<name>.tmp-<host>-<pid>-…``, ``flock``-ed while written) are
removed by the next fetch of that shard and at every eviction pass once their lock is free.

Size limit: ``max_bytes`` (``$VORTEX_SHARD_CACHE_BYTES``, e.g. ``200G``; default half the free space
of the cache's file system at first use). After each download the least recently used shards and
sample-index folders (``.index/``, :mod:`.index_cache`; not one a live loader holds) are deleted
until the cache fits; the shard just fetched is never evicted. A reader that still has an
evicted shard open keeps reading it (POSIX unlink semantics); a later open fetches it again.
"""

from __future__ import annotations

import atexit
import errno
import hashlib
import logging
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock, Timeout

from ..errors import InputError
from ..format.manifest import sha256_file
from ..format.tar_index import ShardReadError
from ..temporaries import LockedTemp, final_name, remove_if_abandoned, reraise_naming, writer_tag
from .index_cache import folder_bytes, index_folders, remove_abandoned_index_temporaries, remove_index_folder

ENV_DIR = "VORTEX_SHARD_CACHE"
ENV_BYTES = "VORTEX_SHARD_CACHE_BYTES"
DEFAULT_FREE_FRACTION = 0.5
HTTP_TIMEOUT_S = 60.0
"""Seconds an HTTP connect or read may stall before the fetch fails."""
log = logging.getLogger(__name__)
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
        self._urls: dict[str, str] = {}  # cached name -> URL, for messages

    def path_for(self, url: str) -> Path:
        return self.directory / cache_name(url)

    def fetch(self, url: str, expect: tuple[int, str] | None = None) -> Path:
        """The local copy of ``url``, downloading it first if no process on this node has.
        ``expect``: the manifest's (bytes, sha256) of the shard, checked as described above."""
        dest = self.path_for(url)
        self._urls[dest.name] = url
        if not self._usable(dest, expect, verify=False):
            with self._lock(dest.name):
                if not self._usable(dest, expect, verify=True):
                    self._remove_abandoned(dest.name)
                    self._download(url, dest, expect)
                    self.downloads += 1
            self.evict(keep=dest)
        if not self._touch(dest):  # evicted by another process between the check and now
            return self.fetch(url, expect)
        return dest

    def refetch(self, url: str, expect: tuple[int, str] | None) -> tuple[bool, Path]:
        """After a sample of cached shard ``url`` failed its checksums: (fetched again?, the cached
        path). The copy itself is hashed (not trusted to its record): one unlike the manifest is
        fetched again; one like it is the manifest's shard, and fetching it again cannot help."""
        dest = self.path_for(url)
        with self._lock(dest.name):
            self._record(dest.name).unlink(missing_ok=True)
            if self._usable(dest, expect, verify=True):
                return False, dest
            self._download(url, dest, expect)
            self.downloads += 1
        self.evict(keep=dest)
        return True, dest

    def _lock(self, name: str) -> FileLock:
        return FileLock(str(self.directory / ".locks" / (name + ".lock")))

    def _record(self, name: str) -> Path:
        """``.locks/<name>.sha256``: "size inode ctime_ns sha256" of the copy when it was hashed;
        its mtime is the copy's last use (touching the copy would change the copy's ctime)."""
        return self.directory / ".locks" / (name + ".sha256")

    def _touch(self, dest: Path) -> bool:
        """Mark a use of ``dest`` (the eviction order); False if it is gone."""
        for p in (self._record(dest.name), dest):  # a copy without a record: older versions
            try:
                os.utime(p)
                return dest.exists()
            except FileNotFoundError:
                pass
        return False

    def _usable(self, dest: Path, expect: tuple[int, str] | None, verify: bool) -> bool:
        """Whether the cached copy may be used. Without the download lock (``verify=False``) only
        cheap checks; with it, a copy without a valid record is hashed once, and a copy that does
        not match the manifest is deleted."""
        try:
            st = dest.stat()
        except FileNotFoundError:
            return False
        if expect is None:
            return True
        size, sha = expect
        try:
            rec_size, rec_ino, rec_ctime, rec_sha = self._record(dest.name).read_text().split()
            # Any write to the copy changes its ctime: a copy changed in place is hashed again.
            recorded = rec_sha if (int(rec_size), int(rec_ino), int(rec_ctime)) == \
                (st.st_size, st.st_ino, st.st_ctime_ns) else None
        except (OSError, ValueError):
            recorded = None
        if st.st_size == size and recorded == sha:
            return True
        if not verify:
            return False
        if st.st_size == size and recorded is None:
            recorded = sha256_file(dest)
            self._write_record(dest, recorded)
            if recorded == sha:
                return True
        log.warning("%s: cached copy %s (%d bytes, sha256 %s...) does not match the manifest (%d bytes, %s...); "
                    "fetching it again", self._urls.get(dest.name, dest.name), dest, st.st_size,
                    (recorded or "?")[:12], size, sha[:12])
        dest.unlink(missing_ok=True)
        self._record(dest.name).unlink(missing_ok=True)
        return False

    def _write_record(self, dest: Path, sha: str) -> None:
        st, rec = dest.stat(), self._record(dest.name)
        try:
            rec.write_text(f"{st.st_size} {st.st_ino} {st.st_ctime_ns} {sha}\n")
        except OSError as e:  # a full disk fails the write naming no file
            reraise_naming(e, rec)

    def _download(self, url: str, dest: Path, expect: tuple[int, str] | None) -> None:
        for attempt in (1, 2):
            tmp = LockedTemp(dest, f"{writer_tag()}-{uuid.uuid4().hex[:8]}")
            h, n = hashlib.sha256(), 0
            try:
                with open_remote(url) as src:
                    while chunk := src.read(1 << 20):
                        tmp.file.write(chunk)
                        h.update(chunk)
                        n += len(chunk)
            except OSError as e:
                tmp.discard()
                if getattr(e, "filename", None) == str(tmp.path) or e.errno == errno.ENOSPC:
                    raise ShardReadError(f"{url}: cannot write the cached copy {tmp.path} ({e.strerror or e})") from None
                raise
            except BaseException:
                tmp.discard()
                raise
            if expect is not None and (n, h.hexdigest()) != tuple(expect):
                tmp.discard()
                if attempt == 1:
                    continue  # a transfer cut short: once more before calling the shard bad
                raise ShardReadError(f"{url}: fetched {n} bytes with sha256 {h.hexdigest()[:12]}..., the manifest "
                                     f"lists {expect[0]} bytes, sha256 {expect[1][:12]}... (twice): the remote "
                                     "shard differs from the one the manifest describes")
            tmp.commit()
            self._write_record(dest, h.hexdigest())
            return

    def _remove_abandoned(self, name: str | None = None) -> None:
        """Remove download temporaries whose writer is gone (their flock is free): of shard
        ``name`` (the caller holds its download lock), or of every shard whose download lock is free."""
        for p in self.directory.iterdir():
            final = final_name(p.name)
            if final is None or name is not None and final != name:
                continue
            if name is not None:
                remove_if_abandoned(p, own=True)
                continue
            lock = self._lock(final)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # someone on this node is downloading that shard now
            try:
                remove_if_abandoned(p, own=True)
            finally:
                lock.release()

    def cached(self) -> list[Path]:
        return [p for p in self.directory.iterdir()
                if p.is_file() and not p.name.startswith(".") and final_name(p.name) is None]

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(last use, bytes, path) of every cached shard and sample-index folder (``.index/``)."""
        out = [(max(_mtime(self._record(p.name)), _mtime(p)), _size(p), p) for p in self.cached()]
        return out + [(_mtime(d), folder_bytes(d), d) for d in index_folders(self.directory)]

    def size(self) -> int:
        """Bytes held: shards and sample-index folders."""
        return sum(n for _, n, _ in self._entries())

    def evict(self, keep: Path) -> None:
        """Remove abandoned temporaries, then the least recently used shards and index folders
        until the cache fits ``max_bytes`` (never ``keep``, nor an index folder a loader holds)."""
        with FileLock(str(self.directory / ".locks" / "evict.lock")):
            self._remove_abandoned()
            remove_abandoned_index_temporaries(self.directory)
            entries = sorted(self._entries(), key=lambda e: e[0])
            total = sum(n for _, n, _ in entries)
            for _, n, p in entries:
                if total <= self.max_bytes:
                    break
                if p == keep:
                    continue
                if p.is_dir() and not remove_index_folder(p):
                    continue  # a live loader holds it
                if p.is_file():
                    p.unlink(missing_ok=True)
                    self._record(p.name).unlink(missing_ok=True)
                total -= n
                self.evicted += 1


def open_remote(url: str) -> BinaryIO:
    """A remote file for reading: ``http(s)://`` with urllib (so a failure says the HTTP status or
    the connection error, not a curl exit code), anything else with webdataset's ``gopen``
    (``pipe:CMD``, ``s3://`` ...). Failures raise ShardReadError naming the URL and the cause."""
    if url.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            return urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S)
        except urllib.error.HTTPError as e:
            raise ShardReadError(f"{url}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else e.reason
            raise ShardReadError(f"{url}: cannot connect ({reason})") from None
        except (OSError, ValueError) as e:  # a timeout, a malformed URL
            raise ShardReadError(f"{url}: cannot fetch ({e})") from None
    from webdataset.gopen import gopen

    return _PipeErrors(url, gopen(url, "rb"))


class _PipeErrors:
    """gopen's stream, whose errors (webdataset reports a pipe's exit status as a repr of its
    Popen arguments) become ShardReadError naming the URL and the exit status."""

    def __init__(self, url: str, stream: BinaryIO):
        self.url, self.stream = url, stream

    def read(self, n: int = -1) -> bytes:
        try:
            return self.stream.read(n)
        except OSError as e:
            raise self._error(e) from None

    def _error(self, e: OSError) -> ShardReadError:
        m = re.search(r"exit (-?\d+)", str(e))
        why = f"the command exited with status {m.group(1)}" if m else str(e)
        return ShardReadError(f"{self.url}: cannot fetch ({why})")

    def __enter__(self) -> "_PipeErrors":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stream.close()
        except OSError as e:
            if exc[0] is None:
                raise self._error(e) from None


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
