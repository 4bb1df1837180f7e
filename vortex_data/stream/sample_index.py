"""A source's per-sample arrays in memory-mapped files: one copy per node, not one per worker.

What the loader needs per sample (key, shard number, each member's extension, data offset, size
and XXH3-64) is turned, once, from the manifest's Parquet index into flat NumPy
arrays (``.npy``) in a folder ``.index/`` of the node's cache (:func:`vortex_data.stream.shard_cache.node_cache_dir`),
named by a hash of the manifest, its index file and the key pattern. Every DataLoader worker and
every rank on the node maps the same files read-only, so the pages live once in the page cache;
a :class:`SourceIndex` pickles as its folder's name (a few hundred bytes) and a worker's memory
does not grow with the number of samples. A second loader (another rank, a restart with a kept
cache) finds the folder and only maps it.

Layout (``n`` samples, ``m`` members in all): ``shard`` int32 (n); ``key_end`` int64 (n+1) into
``key_bytes`` uint8 (UTF-8 keys back to back); ``member_end`` int64 (n+1)
into ``ext`` int16 (m, into ``meta.json``'s ``exts``), ``offset`` int64 (m, -1 where the index
has none), ``size`` int64 (m), ``xxh3`` uint64 (m) and ``checked`` bool (n, the sample's
checksums are in the index). ``meta.json`` also lists the shard URLs.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..errors import InputError
from ..format.integrity import CHECKSUM_COLUMN, OFFSET_COLUMN, SIZE_COLUMN
from ..format.manifest import ManifestError, is_remote, join_url, load_manifest, local_path, read_bytes
from ..format.tar_index import sample_keys

log = logging.getLogger(__name__)

FORMAT = 4
"""4: ``meta.json`` records each file's size and XXH3-64, and its own (:func:`folder_problem`)."""
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
        self._held: int | None = None
        """load_source_index's shared lock on the folder (the process that loaded it only)."""

    def __del__(self) -> None:
        held, self._held = getattr(self, "_held", None), None
        if held is not None:
            try:
                os.close(held)
            except OSError:
                pass

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
                      key_pattern: str | None = None) -> SourceIndex:
    """The :class:`SourceIndex` of ``manifest``, its arrays in ``root/.index/<hash>``: used if the
    folder checks out (:func:`folder_problem`), else (absent, damaged, cut short) built there
    again, once per node (a file lock), written through temporaries (temporaries.py) and renamed
    into place. The index holds a shared lock on the folder while it lives, so the cache's
    eviction (which counts these folders) leaves it alone."""
    d = index_dir(root, manifest, key_pattern)
    held = _hold(d)
    if held is None or folder_problem(d) is not None:
        from filelock import FileLock

        _close(held)
        _lock_dir(root).mkdir(parents=True, exist_ok=True)
        with FileLock(str(_build_lock(d))):
            problem = folder_problem(d)
            if problem is not None:
                if problem != "absent":
                    log.warning("%s: sample-index cache folder %s; building it again from %s", d, problem, manifest)
                _remove_folder(d)
                _build_folder(d, manifest, key_pattern)
            held = _hold(d)
        from .shard_cache import ShardCache

        ShardCache(root).evict(keep=d)  # the new folder counts in the cache's size
    try:
        os.utime(d)  # last use, the eviction order
    except OSError:
        pass
    ix = SourceIndex(name or "", d, manifest)
    ix._held = held
    if not name:
        ix.name = str(ix.meta.get("dataset") or Path(manifest).stem)
    return ix


# ---------------------------------------------------------------- the cache folder

def folder_problem(d: Path) -> str | None:
    """None if ``d`` is a complete index folder whose files have the sizes and XXH3-64 sums its
    ``meta.json`` records (and meta.json its own); else what is wrong ("absent" if there is no
    folder). Hashing ~110 MB at 1M samples takes a few tens of ms, once per loader start."""
    import xxhash

    try:
        meta = json.loads((d / "meta.json").read_bytes())
    except FileNotFoundError:
        return "absent"
    except (OSError, ValueError) as e:
        return f"has an unreadable meta.json ({e})"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict):
        return "was written by another version"
    if meta.get("self") != _meta_sum(meta):
        return "has a meta.json that was changed after it was written"
    for k in ARRAYS:
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
    import xxhash

    return xxhash.xxh3_64_hexdigest(json.dumps({k: v for k, v in meta.items() if k != "self"}, sort_keys=True).encode())


def _build_folder(d: Path, manifest: str, key_pattern: str | None) -> None:
    """Build the arrays of ``manifest`` into a temporary folder beside ``d`` and rename it to ``d``
    (the caller holds ``d``'s build lock). Each file goes through a locked temporary, so a failed
    write (a full disk) names the file it was writing."""
    import xxhash

    from ..temporaries import locked_temp, temp_path, writer_tag

    arrays, meta = build_arrays(manifest, key_pattern)
    tmp = temp_path(d, writer_tag())
    tmp.mkdir(parents=True)
    try:
        files = {}
        for k in ARRAYS:
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
    del arrays
    from .workers import return_freed_memory

    return_freed_memory()


def _npy_header(a: np.ndarray) -> bytes:
    # np.save on a file writes through ndarray.tofile, whose failure on a full disk ("63000
    # requested and 28544 written") is an OSError without errno or file name; writing the same
    # bytes ourselves gives the system's error, which locked_temp then names.
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(a))
    return buf.getvalue()  # magic, version and header


def index_folders(root: str | os.PathLike) -> list[Path]:
    """The finished index folders of a cache root (not temporaries, not lock files)."""
    from ..temporaries import final_name

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
    from filelock import FileLock, Timeout

    lock = FileLock(str(_build_lock(d)))
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


def remove_abandoned_temporaries(root: str | os.PathLike) -> int:
    """Remove index temporaries whose builder is gone (its build lock is free): ``<hash>.tmp-*``
    folders a killed process left, and ``.tmp-*`` ones of older versions an hour after their last
    write. Returns how many were removed."""
    from filelock import FileLock, Timeout

    from ..temporaries import ABANDONED_AFTER_S, final_name

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
        lock = FileLock(str(_build_lock(top / final)))
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


def _lock_dir(root: str | os.PathLike) -> Path:
    return Path(root) / ".locks"


def _build_lock(d: Path) -> Path:
    """``<root>/.locks/index-<hash>.lock`` (beside the shard cache's locks; no shard is named so)."""
    return _lock_dir(d.parent.parent) / f"index-{d.name}.lock"


def _remove_folder(d: Path) -> None:
    """Remove a damaged ``d`` and the temporaries of ``d`` (the caller holds its build lock, so
    nobody is writing them)."""
    from ..temporaries import final_name

    shutil.rmtree(d, ignore_errors=True)
    for p in d.parent.glob(f"{d.name}.tmp-*"):
        if final_name(p.name) == d.name:
            shutil.rmtree(p, ignore_errors=True)


def _hold(d: Path) -> int | None:
    """A descriptor of ``d/meta.json`` under a shared flock (None if there is none): eviction
    then skips the folder. Checked to be the file now at that path, not one evicted meanwhile."""
    try:
        fd = os.open(d / "meta.json", os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)  # being evicted right now
        return None
    except OSError:
        pass  # no flock here
    try:
        same = os.fstat(fd).st_ino == os.stat(d / "meta.json").st_ino
    except OSError:
        same = False
    if not same:
        os.close(fd)
        return None
    return fd


def _close(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)
