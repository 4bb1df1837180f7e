"""`vortex-data verify`: re-read every shard a manifest lists and check it against the manifest and
its index (size, sha256, key grammar, member checksums, the member offsets and sizes the loader
reads by, decoding). A remote shard is fetched whole into a temporary folder by the node cache's
fetcher and checked like a local one.

`vortex-data reindex`: rewrite an index that lacks member checksums or offsets (an older build)
from shards that still match the manifest's sha256."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .format.geometry import Intrinsics
from .format.integrity import (CHECKSUM_COLUMN, OFFSET_COLUMN, SIZE_COLUMN, SampleError, check_members, key_mismatch,
                               member_checksums, member_spans)
from .format.manifest import INDEX_SCHEMA, Manifest, atomic_write_bytes, is_remote, load_manifest, sha256_file
from .format.schema import Sample, SchemaError, decode_sample
from .format.tar_index import (TAR_ERRORS, KeyGrammarError, ShardReadError, check_key, dataset_split, iter_samples,
                               member_name, members)
from .stream.shard_cache import ShardCache
from .temporaries import locked_temp


@dataclass
class VerifyReport:
    manifest: Path
    shards_checked: int = 0
    samples_checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(path: Path, decode: bool = True, progress: bool = False) -> VerifyReport:
    """Check every shard's size and sha256, every key against the key grammar, every member
    against the index's checksum, decode every sample, and match the index.

    Each problem names the shard (and sample) it concerns; nothing stops at the first one.
    """
    m = load_manifest(path)
    rep = VerifyReport(manifest=path)
    try:
        index = _IndexByShard(m)
    except Exception as e:  # noqa: BLE001 -- any unreadable index is one reported problem
        rep.problems.append(f"{m.index_path()}: cannot read the Parquet index ({e})")
        index = None
    shards = list(zip(m.shards, m.shard_paths()))
    if progress:
        from tqdm import tqdm
        shards = tqdm(shards, desc="verify", unit="shard")
    fetched = None  # a temporary folder for the remote shards, each deleted once checked
    for entry, shard in shards:
        rel = entry["path"]
        where: Path | str = shard
        if is_remote(rel):  # an http(s):// or pipe: shard: fetched whole, then checked like a local one
            fetched = fetched or tempfile.TemporaryDirectory(prefix="vortex-verify-")
            where = rel
            try:
                shard = ShardCache(fetched.name, max_bytes=0).fetch(rel)
            except (ShardReadError, OSError) as e:
                rep.problems.append(str(e) if isinstance(e, ShardReadError) else f"{rel}: cannot fetch ({e})")
                continue
        elif not shard.is_file():
            rep.problems.append(f"{shard}: shard missing")
            continue
        size = shard.stat().st_size
        if size != entry["bytes"]:
            rep.problems.append(f"{where}: {size} bytes, manifest says {entry['bytes']}")
        digest = sha256_file(shard)
        if digest != entry["sha256"]:
            rep.problems.append(f"{where}: sha256 {digest[:12]}... does not match the manifest ({entry['sha256'][:12]}...)")
        rep.shards_checked += 1
        keys = []
        want_keys, sums, spans = index.shard(rel) if index is not None else ([], {}, {})
        if spans:
            rep.problems += _span_problems(shard, where, spans)
        try:
            for key, members in iter_samples(shard):
                keys.append(key)
                try:
                    # A key outside the grammar ('../x', absolute, dotted) could escape a folder
                    # when members are extracted, even in a manifest whose checksums all agree.
                    check_key(key)
                    if key in sums:
                        check_members(str(where), key, members, sums[key])
                    other = key_mismatch(key, members)
                    if other is not None:
                        rep.problems.append(f"{where}: sample {key!r}: its json member records key {other!r}")
                except KeyGrammarError as e:
                    rep.problems.append(f"{where}: {e}")
                except SampleError as e:
                    rep.problems.append(str(e))
                if decode:
                    try:
                        decode_sample(members, key)
                    except SchemaError as e:
                        rep.problems.append(f"{where}: {e}")
                rep.samples_checked += 1
        except (*TAR_ERRORS, OSError) as e:
            rep.problems.append(f"{where}: unreadable tar ({e})")
        if len(keys) != entry["samples"]:
            rep.problems.append(f"{where}: {len(keys)} samples, manifest says {entry['samples']}")
        if index is not None and index.rows and keys != want_keys:
            rep.problems.append(f"{where}: sample keys differ from the index {m.index_path().name}")
        if where is not shard:
            shard.unlink(missing_ok=True)
    if fetched is not None:
        fetched.cleanup()
    written = sum(s["samples"] for s in m.shards)
    if m.totals.get("written") != written or m.totals.get("input_frames") != written + len(m.rejected):
        rep.problems.append(f"{path}: totals do not reconcile (written {m.totals.get('written')}, "
                            f"rejected {len(m.rejected)}, input {m.totals.get('input_frames')})")
    if index is not None and index.rows and index.rows != written:
        rep.problems.append(f"{m.index_path()}: {index.rows} rows, shards hold {written} samples")
    return rep


def _span_problems(shard: Path, where: Path | str, spans: dict[str, dict[str, tuple[int, int]]]) -> list[str]:
    """Each member whose offset or size in the index differs from its tar header (what the loader
    reads by), naming shard, key, member and both values."""
    out = []
    try:
        with open(shard, "rb") as f:
            tar = {(m.key, m.ext): (m.offset, m.size) for m in members(f)}
    except (*TAR_ERRORS, OSError):
        return out  # the sample pass reports the unreadable tar
    for key, exts in spans.items():
        for ext, (off, size) in sorted(exts.items()):
            got = tar.get((key, ext))
            name = member_name(key, ext)
            if got is None:
                out.append(f"{where}: sample {key!r} member {name!r}: in the index (offset {off}, size {size}) "
                           "but not in the shard")
            elif got != (off, size):
                out.append(f"{where}: sample {key!r} member {name!r}: the index says offset {off} size {size}, "
                           f"the tar header says offset {got[0]} size {got[1]}")
    return out


class _IndexByShard:
    """The index's keys, member checksums and spans, handed out one shard at a time: only the
    columns verify needs are held (as Arrow arrays), and Python objects for one shard at a time."""

    def __init__(self, m: Manifest):
        import numpy as np

        pf = m.index_file()
        cols = ["key", "shard"] + [c for c in (CHECKSUM_COLUMN, OFFSET_COLUMN, SIZE_COLUMN)
                                   if c in pf.schema_arrow.names]
        self.table = pf.read(columns=cols)
        self.rows = self.table.num_rows
        shard = self.table.column("shard").combine_chunks().dictionary_encode()
        codes = np.asarray(shard.indices)
        order = np.argsort(codes, kind="stable")  # rows of one shard together, in index order
        bounds = np.searchsorted(codes[order], np.arange(len(shard.dictionary) + 1))
        self._rows = {name: order[bounds[i]:bounds[i + 1]] for i, name in enumerate(shard.dictionary.to_pylist())}
        self._by_name = {Path(k).name: v for k, v in self._rows.items()}

    def shard(self, rel: str) -> tuple[list[str], dict[str, dict[str, int]], dict[str, dict[str, tuple[int, int]]]]:
        """(keys in index order, key -> {extension: XXH3-64}, key -> {extension: (offset, size)})
        of one shard's rows; a shard whose path became a URL is found by its file name."""
        rows = self._rows.get(rel)
        if rows is None:
            rows = self._by_name.get(Path(rel.split("?")[0]).name)
        if rows is None or not len(rows):
            return [], {}, {}
        part = self.table.take(rows)
        keys = part.column("key").to_pylist()

        def column(name: str) -> list:
            return part.column(name).to_pylist() if name in part.column_names else [None] * len(keys)

        sums = {k: dict(c) for k, c in zip(keys, column(CHECKSUM_COLUMN)) if c is not None}
        spans = {k: {e: (o, dict(s or ()).get(e)) for e, o in dict(o).items()}
                 for k, o, s in zip(keys, column(OFFSET_COLUMN), column(SIZE_COLUMN)) if o is not None}
        return keys, sums, spans


# ---------------------------------------------------------------- reindex

def reindex(path: Path) -> int:
    """Rewrite a manifest's Parquet index in place with what the loader checks and reads by: every
    member's XXH3-64, data offset and size, and the ``dataset`` and ``split`` columns, read from
    the shards after each is checked against the manifest's size and sha256 (so the index describes
    the shards the build wrote, not ones changed since). An index built before those columns keeps
    its other values; a manifest without an index gets one computed by decoding every sample
    (``rejected_depth_pixels`` is then 0: the source is no longer there to count). Returns the rows.

    Raises InputError naming the shard and the fix when a shard is missing, remote, or changed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .convert.shards import index_row

    m = load_manifest(path)
    if m.path is None:
        raise InputError(f"{path}: reindex rewrites a local manifest's index; download the manifest first")
    old: dict[str, dict] = {}
    if m.index:
        old = {r["key"]: r for r in m.read_index().to_pylist()}
    rows = []
    for entry, shard in zip(m.shards, m.shard_paths()):
        rel = entry["path"]
        if is_remote(rel):
            raise InputError(f"{path}: shard {rel} is remote; reindex reads local shards (download them first)")
        if not shard.is_file():
            raise InputError(f"{shard}: shard missing; rebuild it (vortex-data build-shards)")
        if shard.stat().st_size != entry["bytes"] or sha256_file(shard) != entry["sha256"]:
            raise InputError(f"{shard}: does not match the manifest's size and sha256 (changed since the build), so "
                             "an index read from it would describe other bytes; rebuild it (vortex-data build-shards)")
        with open(shard, "rb") as f:
            offsets: dict[str, dict[str, int]] = {}
            for mem in members(f):
                offsets.setdefault(mem.key, {})[mem.ext] = mem.offset
        for key, smp in iter_samples(shard):
            items = sorted(smp.items())
            row = old.get(key)
            if row is None:
                if m.index:
                    raise InputError(f"{shard}: sample {key!r} is not in the index {m.index_path()}; rebuild the "
                                     "shards (vortex-data build-shards)")
                d = decode_sample(smp, key)
                meta = d["meta"]
                k = meta["intrinsics"]
                row = index_row(key, rel, Sample(key, d["rgb"], d["depth_mm"], Intrinsics(k["fx"], k["fy"], k["cx"], k["cy"]),
                                                 d["seg"] if d["has_seg"] else None, {"scene": meta.get("scene") or None}))
            rows.append({**row, "shard": rel, **dict(zip(("dataset", "split"), dataset_split(key))),
                         CHECKSUM_COLUMN: member_checksums(items), **member_spans(offsets[key], items)})
    if m.index and len(rows) != len(old):
        raise InputError(f"{m.index_path()}: {len(old)} rows, the shards hold {len(rows)} samples; rebuild the "
                         "shards (vortex-data build-shards)")
    with locked_temp(m.index_path()) as f:
        pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), f)
    if not m.index:  # name the new index in the manifest
        atomic_write_bytes(m.path, (json.dumps(m.to_json(), indent=1, sort_keys=False) + "\n").encode())
    return len(rows)
