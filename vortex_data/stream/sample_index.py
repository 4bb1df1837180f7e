"""A source's per-sample arrays in memory-mapped files: one copy per node, not one per worker.

What the loader needs per sample (key, shard number, each member's extension, data offset, size
and XXH3-64) is turned, once, from the manifest's Parquet index into flat NumPy
arrays (``.npy``) in a folder ``.index/`` of the node's cache (:func:`vortex_data.stream.shard_cache.node_cache_dir`),
named by a hash of the manifest, its index file and the key pattern. Every DataLoader worker and
every rank on the node maps the same files read-only, so the pages live once in the page cache;
a :class:`SourceIndex` pickles as its folder's name (a few hundred bytes) and a worker's memory
does not grow with the number of samples. A second loader (another rank, a restart with a kept
cache) finds the folder, checks it against the sizes and XXH3-64 sums its ``meta.json``
records, and maps it; a folder that does not check out is built again (:func:`load_source_index`;
docs/reliability.md, "One shard cache per node").

Layout (``n`` samples, ``m`` members in all): ``shard`` int32 (n); ``key_end`` int64 (n+1) into
``key_bytes`` uint8 (UTF-8 keys back to back); ``member_end`` int64 (n+1)
into ``ext`` int16 (m, into ``meta.json``'s ``exts``), ``offset`` int64 (m, -1 where the index
has none), ``size`` int64 (m), ``xxh3`` uint64 (m) and ``checked`` bool (n, the sample's
checksums are in the index). ``meta.json`` also lists the shard URLs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import InputError
from ..format.integrity import CHECKSUM_COLUMN, OFFSET_COLUMN, SIZE_COLUMN
from ..format.manifest import ManifestError, is_remote, join_url, load_manifest, local_path, read_bytes
from ..format.tar_index import sample_keys

FORMAT = 4
"""4: ``meta.json`` records each file's size and XXH3-64, and its own (:func:`.index_cache.folder_problem`)."""
ARRAYS = ("shard", "key_end", "key_bytes", "member_end", "ext", "offset", "size", "xxh3", "checked")


class SampleIndexError(InputError):
    """Raised with a message naming the manifest; mixture re-raises it as MixtureError."""


class _Keys(Sequence[str]):
    """The keys of a :class:`SourceIndex` as a read-only sequence (decoded on access)."""

    def __init__(self, ix: "SourceIndex"):
        self._ix = ix

    def __len__(self) -> int:
        return len(self._ix)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self._ix.key(j) for j in range(*i.indices(len(self)))]
        return self._ix.key(int(i))

    def __iter__(self) -> Iterator[str]:
        a = self._ix.arrays
        end, data = a["key_end"], a["key_bytes"]
        for i in range(len(self)):
            yield bytes(data[end[i]:end[i + 1]]).decode()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)


class _Checksums(Sequence):
    """Per sample, ``{extension: XXH3-64}`` from the index, or None for a row without them."""

    def __init__(self, ix: "SourceIndex"):
        self._ix = ix

    def __len__(self) -> int:
        return len(self._ix)

    def __getitem__(self, i):  # type: ignore[override]
        a = self._ix.arrays
        i = int(i)
        if not a["checked"][i]:
            return None
        lo, hi = int(a["member_end"][i]), int(a["member_end"][i + 1])
        exts = self._ix.exts
        return {exts[e]: int(h) for e, h in zip(a["ext"][lo:hi], a["xxh3"][lo:hi])}


class SourceIndex:
    """The samples of one source: shard URLs and, per sample, key, shard number, member spans and
    checksums, memory-mapped from the node's index folder (see the module docstring)."""

    def __init__(self, name: str, directory: str | os.PathLike, manifest: str = ""):
        self.name, self.directory, self.manifest = name, str(directory), manifest
        self._arrays: dict[str, np.ndarray] | None = None
        self._meta: dict[str, Any] | None = None
        self._held: Any = None  # load_source_index's hold on the folder (index_cache.Held)

    # -- pickling: the folder's name only; a worker maps the files on first use
    def __getstate__(self) -> dict:
        return {"name": self.name, "directory": self.directory, "manifest": self.manifest}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _arrays=None, _meta=None, _held=None)

    @property
    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            self._meta = json.loads((Path(self.directory) / "meta.json").read_text())
        return self._meta

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            d = Path(self.directory)
            self._arrays = {k: np.load(d / f"{k}.npy", mmap_mode="r") for k in ARRAYS}
        return self._arrays

    @property
    def shards(self) -> list[str]:
        return self.meta["shards"]

    @property
    def shard_digests(self) -> list:
        """Per shard, the manifest's (bytes, sha256), or None where it lists none: remote shards are
        checked against it when they are fetched."""
        return [None if d is None else tuple(d) for d in self.meta["digests"]]

    def remote_digests(self) -> dict[str, tuple[int, str]]:
        """URL -> (bytes, sha256) of this source's remote shards (what a ShardReader checks)."""
        return {url: d for url, d in zip(self.shards, self.shard_digests) if d and is_remote(url)}

    @property
    def exts(self) -> list[str]:
        return self.meta["exts"]

    @property
    def shard_of(self) -> np.ndarray:
        return self.arrays["shard"]

    @property
    def keys(self) -> _Keys:
        return _Keys(self)

    @property
    def checksums(self) -> _Checksums | None:
        """None when no row of the index has checksums (an index built before they existed)."""
        return _Checksums(self) if self.meta["checked"] else None

    @property
    def has_offsets(self) -> bool:
        """Whether every sample's member offsets are in the index (else the reader scans the shard)."""
        return bool(self.meta["offsets"])

    def __len__(self) -> int:
        return int(self.meta["n"])

    def key(self, i: int) -> str:
        a = self.arrays
        return bytes(a["key_bytes"][a["key_end"][i]:a["key_end"][i + 1]]).decode()

    def spans(self, i: int) -> list[tuple[str, int, int]] | None:
        """``[(extension, data offset, size)]`` of sample ``i``'s members, or None where the index
        does not record them."""
        a = self.arrays
        lo, hi = int(a["member_end"][i]), int(a["member_end"][i + 1])
        off = a["offset"][lo:hi]
        if hi == lo or (off < 0).any():
            return None
        exts = self.exts
        return [(exts[e], int(o), int(s)) for e, o, s in zip(a["ext"][lo:hi], off, a["size"][lo:hi])]


# ---------------------------------------------------------------- building the folder

def _identity(url: str) -> str:
    """What names a file's version: size and mtime of a local file, else the URL."""
    if is_remote(url):
        return url
    try:
        st = os.stat(local_path(url))
    except OSError:
        return url  # build_arrays reports it
    return f"{os.path.abspath(url)}\0{st.st_size}\0{st.st_mtime_ns}"


def string_buffers(col) -> tuple[np.ndarray, np.ndarray]:
    """An Arrow string column -> (end offsets n+1 starting at 0, UTF-8 bytes), without Python objects."""
    import pyarrow as pa

    arr = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    arr = arr.cast(pa.large_string())
    _, offs, data = arr.buffers()
    end = np.frombuffer(offs, np.int64)[arr.offset:arr.offset + len(arr) + 1]
    raw = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    return end - end[0], raw[end[0]:end[-1]]


def _map_parts(col):
    """An Arrow map column -> (offsets n+1 from 0, keys as chunked Arrow strings, values uint64, all
    valid), chunk by chunk: ``combine_chunks`` would copy 3M keys and values a column at 1M samples."""
    import pyarrow as pa

    ends, keys, items, base = [np.zeros(1, np.int64)], [], [np.zeros(0, np.uint64)], 0
    for c in col.chunks:
        o = np.asarray(c.offsets).astype(np.int64)
        lo, hi = int(o[0]), int(o[-1])
        ends.append(o[1:] - lo + base)
        base += hi - lo
        keys.append(c.keys.slice(lo, hi - lo))
        items.append(c.items.slice(lo, hi - lo).to_numpy(zero_copy_only=False))
    values = np.concatenate(items).astype(np.uint64, copy=False)
    return np.concatenate(ends), pa.chunked_array(keys, pa.string()), values, col.null_count == 0


def _from_table(table, columns: list[str]) -> dict[str, Any]:
    """The arrays from an index table (vectorised when every row has offsets and checksums)."""
    n = table.num_rows
    out: dict[str, Any] = {}
    out["key_end"], out["key_bytes"] = string_buffers(table.column("key"))
    full = OFFSET_COLUMN in columns and CHECKSUM_COLUMN in columns
    if full:
        o_off, o_keys, o_val, o_ok = _map_parts(table.column(OFFSET_COLUMN))
        s_off, _, s_val, s_ok = _map_parts(table.column(SIZE_COLUMN))
        c_off, c_keys, c_val, c_ok = _map_parts(table.column(CHECKSUM_COLUMN))
        full = (o_ok and s_ok and c_ok and np.array_equal(o_off, s_off)
                and np.array_equal(o_off, c_off) and o_keys.equals(c_keys))
    if full:
        import pyarrow.compute as pc

        ext_names = pc.unique(o_keys)
        exts = [str(e) for e in ext_names.to_pylist()]
        out.update(member_end=o_off, ext=pc.index_in(o_keys, value_set=ext_names).to_numpy().astype(np.int16),
                   offset=o_val.view(np.int64), size=s_val.view(np.int64), xxh3=c_val,
                   checked=np.ones(n, bool), exts=exts)
        return out
    # Older or mixed indexes (no offsets, rows without checksums): row by row.
    sums = table.column(CHECKSUM_COLUMN).to_pylist() if CHECKSUM_COLUMN in columns else [None] * n
    offs = table.column(OFFSET_COLUMN).to_pylist() if OFFSET_COLUMN in columns else [None] * n
    sizes = table.column(SIZE_COLUMN).to_pylist() if SIZE_COLUMN in columns else [None] * n
    exts: list[str] = []
    ext_id: dict[str, int] = {}
    end, ext, offset, size, xxh3, checked = [0], [], [], [], [], []
    for c, o, s in zip(sums, offs, sizes):
        c, o, s = dict(c or ()), dict(o or ()), dict(s or ())
        names = sorted(set(c) | set(o))
        checked.append(bool(c))
        for e in names:
            ext.append(ext_id.setdefault(e, len(ext_id)))
            offset.append(o.get(e, -1) if e in s else -1)
            size.append(s.get(e, 0))
            xxh3.append(c.get(e, 0))
        end.append(len(ext))
    exts = list(ext_id)
    out.update(member_end=np.asarray(end, np.int64), ext=np.asarray(ext, np.int16),
               offset=np.asarray(offset, np.int64), size=np.asarray(size, np.int64),
               xxh3=np.asarray(xxh3, np.uint64), checked=np.asarray(checked, bool), exts=exts)
    return out


def _shard_numbers(col, shards_meta: list[dict], manifest: str, keys_end, key_bytes) -> np.ndarray:
    import pyarrow as pa

    if pa.types.is_integer(col.type):
        return np.asarray(col).astype(np.int32)
    enc = col.combine_chunks().dictionary_encode()
    by_name = {Path(s["path"]).name: i for i, s in enumerate(shards_meta)}
    by_path = {s["path"]: i for i, s in enumerate(shards_meta)}
    lut = []
    for s in enc.dictionary.to_pylist():
        i = by_path.get(s, by_name.get(Path(str(s)).name))
        if i is None:
            row = int(np.flatnonzero(np.asarray(enc.indices) == len(lut))[0])
            key = bytes(key_bytes[keys_end[row]:keys_end[row + 1]]).decode()
            raise SampleIndexError(f"{manifest}: index row {key!r} names unknown shard {s!r}")
        lut.append(i)
    return np.asarray(lut, np.int32)[np.asarray(enc.indices)]


def _take(arrays: dict[str, Any], rows: np.ndarray) -> dict[str, Any]:
    """The arrays of the given rows only (a key_pattern's selection)."""
    out = dict(arrays)
    kend, kb = arrays["key_end"], arrays["key_bytes"]
    lens = np.diff(kend)[rows]
    out["key_end"] = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    out["key_bytes"] = (np.concatenate([kb[kend[r]:kend[r + 1]] for r in rows]) if len(rows)
                        else np.zeros(0, np.uint8))
    mend = arrays["member_end"]
    mlens = np.diff(mend)[rows]
    members = (np.concatenate([np.arange(mend[r], mend[r + 1]) for r in rows]) if len(rows)
               else np.zeros(0, np.int64)).astype(np.int64)
    out["member_end"] = np.concatenate([[0], np.cumsum(mlens)]).astype(np.int64)
    for k in ("ext", "offset", "size", "xxh3"):
        out[k] = arrays[k][members]
    for k in ("shard", "checked"):
        out[k] = arrays[k][rows]
    return out


def build_arrays(manifest: str, key_pattern: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Manifest (+ its Parquet per-sample index) -> (arrays, meta). Without a Parquet index the
    shards' tar headers are listed instead (slower, same keys, no offsets or checksums)."""
    try:
        m = load_manifest(manifest)
        shards_meta = m.shards
        shards = [join_url(manifest, s["path"]) for s in shards_meta]
    except (ManifestError, KeyError, TypeError) as e:
        raise SampleIndexError(e if isinstance(e, ManifestError) else f"{manifest}: bad shard list ({e!r})") from None
    index_rel = m.index
    if index_rel:
        import pyarrow.parquet as pq

        try:
            url = join_url(manifest, index_rel)  # a local index is mapped, not read into a copy first
            pf = pq.ParquetFile(io.BytesIO(read_bytes(url)) if is_remote(url) else local_path(url), memory_map=True)
            names = pf.schema_arrow.names
            columns = [c for c in ("key", "shard", CHECKSUM_COLUMN, OFFSET_COLUMN, SIZE_COLUMN)
                       if c in names]
            table = pf.read(columns=columns)
            arrays = _from_table(table, columns)
            arrays["shard"] = _shard_numbers(table.column("shard"), shards_meta, manifest,
                                             arrays["key_end"], arrays["key_bytes"])
        except (OSError, ValueError, KeyError) as e:
            if isinstance(e, SampleIndexError):
                raise
            raise SampleIndexError(f"{manifest}: per-sample index {index_rel!r} unreadable ({e!r})") from None
    else:
        import pyarrow as pa

        keys: list[str] = []
        shard_of: list[int] = []
        for i, url in enumerate(shards):
            ks = sample_keys(io.BytesIO(read_bytes(url)))  # no index: list the tar headers
            keys.extend(ks)
            shard_of.extend([i] * len(ks))
        arrays = _from_table(pa.table({"key": pa.array(keys, pa.string())}), ["key"])
        arrays["shard"] = np.asarray(shard_of, np.int32)
    n = len(arrays["key_end"]) - 1
    expected = sum(int(s.get("samples", 0)) for s in shards_meta)
    if expected and expected != n:
        raise SampleIndexError(f"{manifest}: shards list {expected} samples but the index has {n}")
    if key_pattern:
        pat = re.compile(key_pattern)
        end, kb = arrays["key_end"], arrays["key_bytes"]
        keep = np.asarray([i for i in range(n) if pat.search(bytes(kb[end[i]:end[i + 1]]).decode())], np.int64)
        arrays = _take(arrays, keep)
        n = len(keep)
    if not n:
        raise SampleIndexError(f"{manifest}: no samples" + (f" match key_pattern {key_pattern!r}" if key_pattern else ""))
    digests = [[int(s["bytes"]), str(s["sha256"])] if s.get("bytes") is not None and s.get("sha256") else None
               for s in shards_meta]
    meta = {"format": FORMAT, "n": n, "shards": shards, "digests": digests, "exts": arrays.pop("exts"),
            "dataset": m.dataset,
            "checked": bool(arrays["checked"].any()),
            "offsets": bool(len(arrays["offset"]) and (arrays["offset"] >= 0).all())}
    return arrays, meta


def index_dir(root: str | os.PathLike, manifest: str, key_pattern: str | None) -> Path:
    """The folder for a manifest's arrays, named by the manifest's bytes and its index's identity."""
    try:
        text = read_bytes(manifest)
        index = json.loads(text).get("index")
    except (OSError, ValueError, AttributeError):
        text, index = b"", None  # build_arrays reports an unreadable manifest
    h = hashlib.sha256(f"{FORMAT}\0{manifest}\0{key_pattern or ''}\0".encode() + text)
    if index:
        h.update(_identity(join_url(manifest, index)).encode())
    return Path(root) / ".index" / h.hexdigest()[:32]


def load_source_index(manifest: str, root: str | os.PathLike, name: str | None = None,
                      key_pattern: str | None = None, cache_bytes: int | None = None) -> SourceIndex:
    """The :class:`SourceIndex` of ``manifest``, its arrays in ``root/.index/<hash>``, checked and
    held while the index lives, built there (once per node) when absent or damaged: see
    :mod:`.index_cache`. A new folder counts in the cache's size (an eviction pass follows)."""
    from .index_cache import open_folder
    from .shard_cache import ShardCache

    d = index_dir(root, manifest, key_pattern)
    held, built = open_folder(d, FORMAT, ARRAYS, lambda: build_arrays(manifest, key_pattern), manifest)
    if built:
        ShardCache(root, cache_bytes).evict(keep=d)
    ix = SourceIndex(name or "", d, manifest)
    ix._held = held
    if not name:
        ix.name = str(ix.meta.get("dataset") or Path(manifest).stem)
    return ix
