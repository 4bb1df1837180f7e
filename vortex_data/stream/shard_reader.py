"""Random-access reads of samples from WebDataset tar shards, grouped by shard.

Each member is read with one ``pread`` at the data offset and size the index records
(:class:`vortex_data.stream.sample_index.SourceIndex`): no tar header is parsed. Open descriptors are
bounded per worker (an LRU of ``max_open``) and counted (``opens``). A shard whose index predates
offsets is scanned once per worker instead (:func:`vortex_data.format.tar_index.member_table`) and the
loader says so. Reading a group of samples sorts them by offset, so each shard is read front to back. Remote shards (``pipe:``,
``http(s)://``, anything webdataset's ``gopen`` understands) are fetched whole into the node's
shard cache (:mod:`vortex_data.stream.shard_cache`: one download per shard for all ranks and workers of
a node, size-limited) and then read the same way.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from ..format.manifest import is_remote, local_path
from ..format.tar_index import TAR_ERRORS, ShardReadError, member_name, member_table
from .shard_cache import ShardCache, node_cache_dir

__all__ = ["ShardReadError", "ShardReader"]


class ShardReader:
    """Reads samples from shards; counts file opens so the benchmark can report them."""

    def __init__(self, cache_dir: str | os.PathLike | None = None, max_open: int = 128,
                 cache_bytes: int | None = None, expected: dict[str, tuple[int, str]] | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_bytes = cache_bytes
        self.expected = expected or {}
        """Remote shard URL -> the manifest's (bytes, sha256): a fetched copy must match it."""
        self.max_open = max_open
        self.opens = 0
        self._cache: ShardCache | None = None
        self._files: OrderedDict[str, int] = OrderedDict()
        self._tables: dict[str, dict[str, list[tuple[str, int, int]]]] = {}
        self._refetched: set[str] = set()

    # -- locating
    def local_path(self, url: str) -> str:
        """The local file for a shard URL, fetching a remote shard into the cache once."""
        if not is_remote(url):
            return local_path(url)
        try:
            return str(self._shard_cache().fetch(url, self.expected.get(url)))
        except ShardReadError:
            raise  # names the URL and the cause already
        except Exception as e:  # noqa: BLE001 -- any fetch failure is this shard's problem
            raise ShardReadError(f"{url}: could not fetch shard ({e})") from e

    def _shard_cache(self) -> ShardCache:
        if self._cache is None:
            # make_loader resolves (and registers) the node's default folder in the main process;
            # a reader used on its own falls back to the same default.
            self.cache_dir = Path(node_cache_dir(self.cache_dir))
            self._cache = ShardCache(self.cache_dir, self.cache_bytes)
        return self._cache

    def refetch(self, url: str) -> tuple[bool, str] | None:
        """After a sample of ``url`` failed its checksums: None for a local shard, else once per
        remote shard and reader, (fetched again?, the cached copy's path) from
        :meth:`ShardCache.refetch`; the caller reads the sample again if it was fetched again."""
        if not is_remote(url) or url in self._refetched or self.expected.get(url) is None:
            return None  # local, done once already, or no sha256 in the manifest to compare with
        self._refetched.add(url)
        fd = self._files.pop(url, None)
        if fd is not None:
            os.close(fd)  # the old copy: the next read opens the new one
        self._tables.pop(url, None)
        try:
            again, path = self._shard_cache().refetch(url, self.expected[url])
        except ShardReadError:
            raise
        except Exception as e:  # noqa: BLE001 -- as local_path: any fetch failure is this shard's problem
            raise ShardReadError(f"{url}: could not fetch shard ({e})") from e
        return again, str(path)

    def _handle(self, url: str) -> int:
        fd = self._files.get(url)
        if fd is not None:
            self._files.move_to_end(url)
            return fd
        path = self.local_path(url)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise ShardReadError(f"{url}: cannot open shard ({e.strerror})") from None
        self.opens += 1
        self._files[url] = fd
        if len(self._files) > self.max_open:
            os.close(self._files.popitem(last=False)[1])
        return fd

    def table(self, url: str) -> dict[str, list[tuple[str, int, int]]]:
        """key -> [(extension, data offset, size)] for one shard, from its tar headers (a scan:
        only for shards whose index has no offsets, and for listing a shard's samples)."""
        t = self._tables.get(url)
        if t is None:
            with os.fdopen(os.dup(self._handle(url)), "rb") as f:
                f.seek(0)  # the duplicate shares the descriptor's position
                try:
                    t = member_table(f)
                except TAR_ERRORS as e:
                    raise ShardReadError(f"{url}: not a readable tar shard ({e})") from None
            self._tables[url] = t
        return t

    def read_group(self, url: str, keys: Iterable[str],
                   spans: Mapping[str, Sequence[tuple[str, int, int]] | None] | None = None
                   ) -> dict[str, dict[str, bytes]]:
        """Members (extension -> bytes) of several samples of one shard, read in file order.

        ``spans``: key -> [(extension, data offset, size)] from the index; a key without them
        (an older index) is looked up in the shard's scanned header table."""
        keys = set(keys)
        where = {k: (spans or {}).get(k) for k in keys}
        if any(v is None for v in where.values()):
            table = self.table(url)
            for k, v in where.items():
                if v is None:
                    if k not in table:
                        raise ShardReadError(f"{url}: sample {k!r} listed in the index is not in the shard")
                    where[k] = table[k]
        fd = self._handle(url)
        out: dict[str, dict[str, bytes]] = {}
        for key in sorted(keys, key=lambda k: where[k][0][1] if where[k] else -1):
            members = {}
            for ext, off, size in where[key]:
                data = os.pread(fd, size, off)
                if len(data) != size:
                    raise ShardReadError(f"{url}: member {member_name(key, ext)} truncated ({len(data)} of {size} bytes)")
                members[ext] = data
            out[key] = members
        return out

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 -- interpreter shutdown
            pass

    def __getstate__(self) -> dict:
        # Open files do not cross process boundaries; each DataLoader worker reopens its own.
        return {"cache_dir": self.cache_dir, "cache_bytes": self.cache_bytes, "max_open": self.max_open, "opens": 0,
                "expected": self.expected,
                "_files": OrderedDict(), "_tables": {}, "_cache": None, "_refetched": set()}
