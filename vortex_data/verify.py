"""`vortex-data verify`: re-read every shard a manifest lists and check it against the manifest and
its index (size, sha256, key grammar, member checksums, decoding). A remote shard is fetched whole
into a temporary folder by the node cache's fetcher and checked like a local one."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path


from .format.integrity import CHECKSUM_COLUMN, SampleError, check_members
from .format.manifest import Manifest, is_remote, load_manifest, sha256_file
from .format.schema import SchemaError, decode_sample
from .format.tar_index import TAR_ERRORS, KeyGrammarError, ShardReadError, check_key, iter_samples
from .stream.shard_cache import ShardCache


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
        want_keys, sums = index.shard(rel) if index is not None else ([], {})
        try:
            for key, members in iter_samples(shard):
                keys.append(key)
                try:
                    # A key outside the grammar ('../x', absolute, dotted) could escape a folder
                    # when members are extracted, even in a manifest whose checksums all agree.
                    check_key(key)
                    if key in sums:
                        check_members(str(where), key, members, sums[key])
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


class _IndexByShard:
    """The index's keys and member checksums, handed out one shard at a time: only the three
    columns verify needs are held (as Arrow arrays), and Python objects for one shard at a time."""

    def __init__(self, m: Manifest):
        import numpy as np

        pf = m.index_file()
        cols = ["key", "shard"] + [c for c in (CHECKSUM_COLUMN,) if c in pf.schema_arrow.names]
        self.table = pf.read(columns=cols)
        self.rows = self.table.num_rows
        shard = self.table.column("shard").combine_chunks().dictionary_encode()
        codes = np.asarray(shard.indices)
        order = np.argsort(codes, kind="stable")  # rows of one shard together, in index order
        bounds = np.searchsorted(codes[order], np.arange(len(shard.dictionary) + 1))
        self._rows = {name: order[bounds[i]:bounds[i + 1]] for i, name in enumerate(shard.dictionary.to_pylist())}
        self._by_name = {Path(k).name: v for k, v in self._rows.items()}

    def shard(self, rel: str) -> tuple[list[str], dict[str, dict[str, int]]]:
        """(keys in index order, key -> {extension: XXH3-64}) of one shard's rows; a shard whose
        path became a URL is found by its file name."""
        rows = self._rows.get(rel)
        if rows is None:
            rows = self._by_name.get(Path(rel.split("?")[0]).name)
        if rows is None or not len(rows):
            return [], {}
        part = self.table.take(rows)
        keys = part.column("key").to_pylist()
        if CHECKSUM_COLUMN not in part.column_names:
            return keys, {}
        sums = part.column(CHECKSUM_COLUMN).to_pylist()
        return keys, {k: dict(c) for k, c in zip(keys, sums) if c is not None}
