"""Manifests: what a build wrote, checksummed, with every rejected frame and a Parquet index.

A manifest ``<dataset>-<split>.json`` lists its shards (paths relative to the manifest file),
their sample counts, sizes and sha256, the totals (input frames = written + rejected, always),
each rejected frame with its reason, the converter's name and options and a fingerprint of the
source. Its per-sample index ``<dataset>-<split>.parquet`` sits beside it. Part manifests from
SLURM array tasks carry ``"part": {"index": i, "count": n}`` and are joined by :func:`merge`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from itertools import islice
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError
from ..temporaries import locked_temp
from .schema import NUM_CLASSES, READABLE_VERSIONS, SCHEMA_VERSION

INDEX_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("shard", pa.string()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("valid_fraction", pa.float32()),
    ("depth_min_m", pa.float32()),
    ("depth_median_m", pa.float32()),
    ("depth_max_m", pa.float32()),
    ("has_seg", pa.bool_()),
    ("class_pixels", pa.list_(pa.int64(), NUM_CLASSES)),
    ("ignore_pixels", pa.int64()),
    ("rejected_depth_pixels", pa.int64()),
    ("fx", pa.float32()),
    ("fy", pa.float32()),
    ("cx", pa.float32()),
    ("cy", pa.float32()),
    # the capture's scene where the source names one (NYU's ``scenes`` cell), else null: what the
    # train/eval leakage check compares (format.scenes: vortex-data preflight and stats).
    ("scene", pa.string()),
    # what the key's first two parts say, as columns so DuckDB and pandas group without parsing keys
    # (absent in indexes written before them).
    ("dataset", pa.string()),
    ("split", pa.string()),
    # extension -> XXH3-64 of the tar member's bytes (vortex_data.format.integrity); absent in older indexes.
    ("member_xxh3_64", pa.map_(pa.string(), pa.uint64())),
    # extension -> data offset and size of the member in its shard (read by offset, no header
    # scan); absent in older indexes, whose shards the loader scans once instead.
    ("member_offset", pa.map_(pa.string(), pa.uint64())),
    ("member_size", pa.map_(pa.string(), pa.uint64())),
])



class ManifestError(InputError):
    """A manifest that cannot be read, merged or trusted; the message names the file."""


SHARD_NAME_RE = re.compile(r"-(\d{6})(?:-(\d+))?\.tar$")
"""``<dataset>-<split>-<group:06d>.tar`` and its continuations ``...-<group:06d>-<k>.tar``."""


def is_remote(url: str) -> bool:
    """A location read through webdataset's ``gopen`` (``pipe:``, ``http(s)://``, ``s3://``...);
    a plain path or a ``file://`` URL is local. The one test of it in the package."""
    return url.startswith("pipe:") or "://" in url and not url.startswith("file://")


def local_path(url: str) -> str:
    """A local location as a filesystem path (``file://`` dropped)."""
    return url[len("file://"):] if url.startswith("file://") else url


def read_bytes(url: str) -> bytes:
    """A whole file, local or remote (a manifest, its index; a shard when there is no index)."""
    if is_remote(url):
        from webdataset.gopen import gopen

        with gopen(url, "rb") as f:
            return f.read()
    return Path(local_path(url)).read_bytes()


def join_url(base: str, rel: str) -> str:
    """``rel`` (a shard or index named in a manifest) resolved against the manifest's location."""
    if "://" in rel or rel.startswith("pipe:") or Path(rel).is_absolute():
        return rel
    if "://" in base:  # any URL, file:// included: joined as text
        return base.rsplit("/", 1)[0] + "/" + rel
    return str(Path(base).parent / rel)


def shard_position(path: str) -> tuple[int, int]:
    """(group, continuation) of a shard file name: its place in a single build's order."""
    m = SHARD_NAME_RE.search(str(path))
    if m is None:
        raise ManifestError(f"{path}: not a shard name (<dataset>-<split>-<group>[-<k>].tar)")
    return int(m.group(1)), int(m.group(2) or 0)


def manifest_name(dataset: str, split: str, part: tuple[int, int] | None = None) -> str:
    base = f"{dataset}-{split}"
    if part is not None and part[1] > 1:
        base += f".part-{part[0]:04d}-of-{part[1]:04d}"
    return base


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes, tag: str | None = None) -> None:
    """Write via a locked, per-writer temporary (see temporaries.py) renamed into place."""
    with locked_temp(path, tag) as f:
        f.write(data)


@dataclass
class Manifest:
    dataset: str
    split: str
    converter: dict[str, Any]
    source: dict[str, Any]
    shards: list[dict[str, Any]]
    rejected: list[dict[str, Any]]
    totals: dict[str, Any]
    report: dict[str, Any] = field(default_factory=dict)
    part: dict[str, int] | None = None
    schema_version: int = SCHEMA_VERSION
    path: Path | None = None
    """Where this manifest was read from or written to (not stored in the file; None when remote)."""
    index: str | None = None
    """The per-sample index the file names, as read (None: written here, or an older manifest
    without one, whose shards a reader lists instead)."""

    @property
    def index_name(self) -> str:
        return manifest_name(self.dataset, self.split,
                             None if self.part is None else (self.part["index"], self.part["count"])) + ".parquet"

    def to_json(self) -> dict[str, Any]:
        out = {
            "schema_version": self.schema_version,
            "dataset": self.dataset,
            "split": self.split,
            "converter": self.converter,
            "source": self.source,
            "totals": self.totals,
            "shards": self.shards,
            "index": self.index_name,
            "rejected": self.rejected,
            "report": self.report,
        }
        if self.part is not None:
            out["part"] = self.part
        return out

    def shard_paths(self) -> list[Path]:
        """Absolute shard paths (the manifest stores them relative to itself)."""
        base = self._dir()
        return [(base / s["path"]).resolve() for s in self.shards]

    def index_path(self) -> Path:
        """The index the manifest names (as the loader finds it), else the name a write gives it."""
        return self._dir() / (self.index or self.index_name)

    def index_file(self) -> pq.ParquetFile:
        """The Parquet index, opened memory-mapped (its schema, row groups, columns on demand)."""
        return pq.ParquetFile(self.index_path(), memory_map=True)

    def read_index(self, columns: list[str] | None = None) -> pa.Table:
        return self.index_file().read(columns=columns)

    def _dir(self) -> Path:
        if self.path is None:
            raise ManifestError("manifest has no location; read it with load_manifest()")
        return self.path.parent


def is_labelled(row: dict[str, Any]) -> bool:
    """An index row is labelled when it has a label map with at least one non-ignore pixel (the
    definition `stats` and `preflight` use)."""
    return bool(row.get("has_seg")) and sum(row.get("class_pixels") or ()) > 0


def compute_totals(shards: list[dict], rejected: list[dict], depth_counters: dict[str, int],
                   rows: Iterable[dict[str, Any]] = (), labelled: int | None = None) -> dict[str, Any]:
    """The manifest's totals; ``labelled`` counted from the index ``rows`` unless given (a build
    that streams its rows counts them group by group)."""
    written = sum(s["samples"] for s in shards)
    return {
        "input_frames": written + len(rejected),
        "written": written,
        "labelled": sum(map(is_labelled, rows)) if labelled is None else labelled,
        "rejected": len(rejected),
        "rejected_by_code": dict(sorted(Counter(r["code"] for r in rejected).items())),
        "shards": len(shards),
        "bytes": sum(s["bytes"] for s in shards),
        **dict(sorted(depth_counters.items())),
    }


def write_manifest(m: Manifest, directory: Path, index_rows: Iterable[dict[str, Any]],
                   batch_rows: int = 8192) -> Path:
    """Write the JSON and its Parquet index atomically; returns the JSON path. The rows are
    written ``batch_rows`` at a time, so an iterator of them keeps memory flat."""
    directory.mkdir(parents=True, exist_ok=True)
    name = m.index_name[: -len(".parquet")]
    json_path = directory / f"{name}.json"
    m.path = json_path
    with locked_temp(m.index_path()) as f, pq.ParquetWriter(f, INDEX_SCHEMA) as writer:
        rows = iter(index_rows)
        while batch := list(islice(rows, batch_rows)):
            writer.write_table(pa.Table.from_pylist(batch, schema=INDEX_SCHEMA))
    atomic_write_bytes(json_path, (json.dumps(m.to_json(), indent=1, sort_keys=False) + "\n").encode())
    return json_path


def load_manifest(path: str | os.PathLike) -> Manifest:
    """The one manifest reader: a local path, a ``file://`` URL or a remote one (see
    :func:`is_remote`), its schema version checked."""
    where = str(path)
    try:
        raw = json.loads(read_bytes(where))
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such manifest") from None
    except ValueError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise ManifestError(f"{path}: cannot read the manifest ({e})") from None
    try:
        if raw["schema_version"] not in READABLE_VERSIONS:
            raise ManifestError(f"{path}: schema version {raw['schema_version']}, this vortex-data reads "
                                f"{', '.join(map(str, READABLE_VERSIONS))}; rebuild the shards (vortex-data build-shards)")
        return Manifest(
            dataset=raw["dataset"], split=raw["split"], converter=raw["converter"], source=raw["source"],
            shards=raw["shards"], rejected=raw["rejected"], totals=raw["totals"], report=raw.get("report", {}),
            part=raw.get("part"), schema_version=raw["schema_version"],
            path=None if is_remote(where) else Path(local_path(where)), index=raw.get("index"),
        )
    except KeyError as e:
        raise ManifestError(f"{path}: missing field {e}") from None


# ---------------------------------------------------------------- merging SLURM parts

def merge(paths: list[Path], out_dir: Path | None = None) -> Path:
    """Join the part manifests of one SLURM array build into the full manifest.

    Refuses parts from different builds (dataset, split, converter options or source differ),
    a missing or repeated part, and duplicate shards or keys.
    """
    parts = [load_manifest(p) for p in paths]
    if not parts:
        raise ManifestError("no part manifests given")
    first = parts[0]
    for p in parts:
        if p.part is None:
            raise ManifestError(f"{p.path}: not a part manifest (no 'part' field); nothing to merge")
        for attr in ("dataset", "split", "converter", "source"):
            if getattr(p, attr) != getattr(first, attr):
                raise ManifestError(f"{p.path}: {attr} differs from {first.path}; these parts are not one build")
    count = first.part["count"]
    seen = Counter(p.part["index"] for p in parts)
    if any(p.part["count"] != count for p in parts):
        raise ManifestError("parts disagree on the number of tasks: " + ", ".join(f"{p.path}" for p in parts))
    missing = sorted(set(range(count)) - set(seen))
    dup = sorted(i for i, c in seen.items() if c > 1)
    if missing or dup:
        raise ManifestError(f"parts of {first.dataset}-{first.split}: missing task indices {missing}, repeated {dup}")
    out_dir = out_dir or first.path.parent
    shards, rejected, rows = [], [], []
    counters: Counter[str] = Counter()
    for p in parts:
        base = p.path.parent
        for s in p.shards:
            rel = os.path.relpath((base / s["path"]).resolve(), out_dir.resolve())
            shards.append({**s, "path": rel})
        rejected.extend(p.rejected)
        counters.update({k: v for k, v in p.totals.items() if k.startswith("depth_")})
        tbl = p.read_index().to_pylist()
        for r in tbl:
            r["shard"] = os.path.relpath((base / r["shard"]).resolve(), out_dir.resolve())
        rows.extend(tbl)
    # Shard names carry the global (group, continuation) numbers: sorting by them, not by the
    # name as a string ('-000000-1.tar' < '-000000.tar', '-10' < '-2'), restores the single-build order.
    order = sorted(range(len(shards)), key=lambda i: shard_position(shards[i]["path"]))
    shards = [shards[i] for i in order]
    rank = {s["path"]: i for i, s in enumerate(shards)}
    rows.sort(key=lambda r: rank[r["shard"]])  # stable: keeps the in-shard order
    _check_unique([s["path"] for s in shards], "shard")
    _check_unique([r["key"] for r in rows], "sample key")
    rejected.sort(key=lambda r: (r["split"], r["frame"]))
    merged = Manifest(
        dataset=first.dataset, split=first.split, converter=first.converter, source=first.source,
        shards=shards, rejected=rejected, totals=compute_totals(shards, rejected, dict(counters), rows),
        report=first.report, schema_version=first.schema_version,
    )
    return write_manifest(merged, out_dir, rows)


def _check_unique(items: list[str], what: str) -> None:
    dups = [k for k, c in Counter(items).items() if c > 1]
    if dups:
        raise ManifestError(f"duplicate {what}s across parts: {dups[:5]}")
