"""Random-access reads of samples from WebDataset tar shards, grouped by shard.

A shard is opened once per worker and kept open (LRU of ``max_open`` handles); its member
table (name -> offset, size) comes from the tar headers on first use
(:func:`vortex_data.tar_index.member_table`). Reading a group of
samples sorts them by offset, so each shard is read front to back. Remote shards (``pipe:``,
``http(s)://``, anything webdataset's ``gopen`` understands) are fetched whole into the node's
shard cache (:mod:`vortex_data.shard_cache`: one download per shard for all ranks and workers of
a node, size-limited) and then read the same way.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO, Iterable

from .shard_cache import ShardCache, node_cache_dir
from .tar_index import TAR_ERRORS, ShardReadError, member_name, member_table

__all__ = ["ShardReadError", "ShardReader", "is_remote"]


def is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url and not url.startswith("file://")


class ShardReader:
    """Reads samples from shards; counts file opens so the benchmark can report them."""

    def __init__(self, cache_dir: str | os.PathLike | None = None, max_open: int = 32,
                 cache_bytes: int | None = None, expected: dict[str, tuple[int, str]] | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_bytes = cache_bytes
        self.expected = expected or {}
        """Remote shard URL -> the manifest's (bytes, sha256): a fetched copy must match it."""
        self.max_open = max_open
        self.opens = 0
        self._cache: ShardCache | None = None
        self._files: OrderedDict[str, BinaryIO] = OrderedDict()
        self._tables: dict[str, dict[str, list[tuple[str, int, int]]]] = {}

    # -- locating
    def local_path(self, url: str) -> str:
        """The local file for a shard URL, fetching a remote shard into the cache once."""
        if url.startswith("file://"):
            return url[len("file://"):]
        if not is_remote(url):
            return url
        if self._cache is None:
            # make_loader resolves (and registers) the node's default folder in the main process;
            # a reader used on its own falls back to the same default.
            self.cache_dir = Path(node_cache_dir(self.cache_dir))
            self._cache = ShardCache(self.cache_dir, self.cache_bytes)
        try:
            return str(self._cache.fetch(url, self.expected.get(url)))
        except ShardReadError:
            raise  # names the URL and the cause already
        except Exception as e:  # noqa: BLE001 -- any fetch failure is this shard's problem
            raise ShardReadError(f"{url}: could not fetch shard ({e})") from e

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
            try:
                t = member_table(f)
            except TAR_ERRORS as e:
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
                    raise ShardReadError(f"{url}: member {member_name(key, ext)} truncated ({len(data)} of {size} bytes)")
                members[ext] = data
            out[key] = members
        return out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __getstate__(self) -> dict:
        # Open files do not cross process boundaries; each DataLoader worker reopens its own.
        return {"cache_dir": self.cache_dir, "cache_bytes": self.cache_bytes, "max_open": self.max_open, "opens": 0,
                "expected": self.expected,
                "_files": OrderedDict(), "_tables": {}, "_cache": None}
