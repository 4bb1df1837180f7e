"""Random-access reads of samples from WebDataset tar shards, grouped by shard.

A shard is opened once per worker and kept open (LRU of ``max_open`` handles); its member
table (name -> offset, size) comes from the tar headers on first use. Reading a group of
samples sorts them by offset, so each shard is read front to back. Remote shards (``pipe:``,
``http(s)://``, anything webdataset's ``gopen`` understands) are fetched whole into a cache
directory first and then read the same way; a cached copy is reused across epochs and runs.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO, Iterable

from .schema import split_member


class ShardReadError(IOError):
    """A shard that is missing, unreadable, or lacks a sample the index promises."""


def is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url and not url.startswith("file://")


class ShardReader:
    """Reads samples from shards; counts file opens so the benchmark can report them."""

    def __init__(self, cache_dir: str | os.PathLike | None = None, max_open: int = 32):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_open = max_open
        self.opens = 0
        self._files: OrderedDict[str, BinaryIO] = OrderedDict()
        self._tables: dict[str, dict[str, list[tuple[str, int, int]]]] = {}

    # -- locating
    def local_path(self, url: str) -> str:
        """The local file for a shard URL, fetching a remote shard into the cache once."""
        if url.startswith("file://"):
            return url[len("file://"):]
        if not is_remote(url):
            return url
        if self.cache_dir is None:
            self.cache_dir = Path(tempfile.mkdtemp(prefix="vortex-shards-"))
        name = hashlib.sha1(url.encode()).hexdigest()[:16] + "-" + Path(url.split("?")[0]).name.replace(" ", "_")
        dest = self.cache_dir / name
        if not dest.exists():
            from webdataset.gopen import gopen

            self.cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_suffix(f".tmp{os.getpid()}")
            try:
                with gopen(url, "rb") as src, open(tmp, "wb") as out:
                    while chunk := src.read(1 << 20):
                        out.write(chunk)
                os.replace(tmp, dest)  # atomic: a crashed fetch never leaves a partial shard
            except Exception as e:
                tmp.unlink(missing_ok=True)
                raise ShardReadError(f"{url}: could not fetch shard ({e})") from e
        return str(dest)

    def _handle(self, url: str) -> BinaryIO:
        f = self._files.get(url)
        if f is not None:
            self._files.move_to_end(url)
            return f
        path = self.local_path(url)
        try:
            f = open(path, "rb")
        except OSError as e:
            raise ShardReadError(f"{url}: cannot open shard ({e.strerror})") from None
        self.opens += 1
        self._files[url] = f
        if len(self._files) > self.max_open:
            self._files.popitem(last=False)[1].close()
        return f

    def table(self, url: str) -> dict[str, list[tuple[str, int, int]]]:
        """key -> [(extension, data offset, size)] for one shard, from its tar headers."""
        t = self._tables.get(url)
        if t is None:
            f = self._handle(url)
            f.seek(0)
            t = {}
            try:
                with tarfile.open(fileobj=f, mode="r:") as tf:
                    for m in tf:
                        if m.isfile():
                            key, ext = split_member(m.name)
                            t.setdefault(key, []).append((ext, m.offset_data, m.size))
            except tarfile.TarError as e:
                raise ShardReadError(f"{url}: not a readable tar shard ({e})") from None
            self._tables[url] = t
        return t

    def read_group(self, url: str, keys: Iterable[str]) -> dict[str, dict[str, bytes]]:
        """Members (extension -> bytes) of several samples of one shard, read in file order."""
        table = self.table(url)
        wanted = sorted(set(keys), key=lambda k: table[k][0][1] if k in table else -1)
        f = self._handle(url)
        out: dict[str, dict[str, bytes]] = {}
        for key in wanted:
            if key not in table:
                raise ShardReadError(f"{url}: sample {key!r} listed in the index is not in the shard")
            members = {}
            for ext, off, size in table[key]:
                f.seek(off)
                data = f.read(size)
                if len(data) != size:
                    raise ShardReadError(f"{url}: member {key}.{ext} truncated ({len(data)} of {size} bytes)")
                members[ext] = data
            out[key] = members
        return out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __getstate__(self) -> dict:
        # Open files do not cross process boundaries; each DataLoader worker reopens its own.
        return {"cache_dir": self.cache_dir, "max_open": self.max_open, "opens": 0,
                "_files": OrderedDict(), "_tables": {}}
