"""What a rerun of a build may keep, and what it cleans up.

Each finished shard group leaves a record in ``<shard dir>/.build/<stem>.json`` (its shards with
size and sha256, index rows, rejections, and a fingerprint of its frames' source files). A rerun
keeps a group only when its record belongs to the same build, its sources are unchanged and its
shards still hash to what the record says (:func:`reusable_record`); everything else is rebuilt.
Leftover temporaries are removed only when they are this task's own or provably abandoned, so
concurrent SLURM array tasks never delete each other's work (:func:`remove_temporaries`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

from ..format.manifest import SHARD_NAME_RE, sha256_file
from ..temporaries import final_name, remove_if_abandoned
from .base import Converter, FrameRef, Rejection, printable_path

TMP_GLOB = ".tmp*"  # also matches the '<name>.tmp' of older versions


def record_path(shard_dir: Path, stem: str) -> Path:
    """Where group ``stem``'s record lives."""
    return shard_dir / ".build" / f"{stem}.json"


def reusable_record(path: Path, build_id: str, sources: str) -> dict[str, Any] | None:
    """The group's record at ``path`` if it belongs to this build, its source files are unchanged
    and its shards are intact, else None."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("build_id") != build_id or record.get("sources") != sources:
        return None
    directory = path.parent.parent
    for s in record["shards"]:
        f = directory / s["name"]
        if not f.is_file() or f.stat().st_size != s["bytes"] or sha256_file(f) != s["sha256"]:
            return None
    return record


def group_sources(converter: Converter, frames: Iterable[FrameRef]) -> str:
    """sha256 over (path, size, mtime_ns) of every source file of a group's frames, in frame order.

    Only stat() calls, so checking every group on a rerun stays cheap; a rewritten, truncated,
    restored, added or removed file changes it (contents are not hashed: that would read the
    whole dataset again on every rerun). Names are hashed as bytes, so any file name works.
    """
    root = converter.source_root()
    h = hashlib.sha256()
    for fr in frames:
        for rel in converter.source_files(fr):
            try:
                st = os.stat(root / rel)
                size, mtime = st.st_size, st.st_mtime_ns
            except (OSError, ValueError):
                size = mtime = -1
            h.update(os.fsencode(rel) + f"\0{size}\0{mtime}\n".encode())
    return h.hexdigest()


def source_fingerprint(root: Path, frames: Iterable[FrameRef], rejected: Iterable[Rejection]) -> dict[str, Any]:
    """sha256 over the sorted (relative path, size) of every source file the build touched.

    Cheap (no file contents read) yet changes when a file is added, removed or rewritten with a
    different size; mtimes are left out so a copied dataset fingerprints the same.
    """
    files = {f for fr in frames for f in fr.files} | {r.file for r in rejected if r.file}
    h = hashlib.sha256()
    for rel in sorted(files):
        p = root / rel
        try:
            size = p.stat().st_size if p.is_file() else -1
        except (OSError, ValueError):
            size = -1
        h.update(os.fsencode(rel) + f"\t{size}\n".encode())  # bytes: any file name, even not UTF-8
    return {"root": printable_path(root.resolve()), "files": len(files), "sha256": h.hexdigest()}


def remove_temporaries(directory: Path, own_stems: set[str]) -> None:
    """Remove leftovers of this task's own groups (unless a live process still holds them) and
    other temporaries only when provably abandoned: never another live task's work."""
    for tmp in list(directory.glob(f"*.tar{TMP_GLOB}")) + list(directory.glob(f".build/*.json{TMP_GLOB}")):
        remove_if_abandoned(tmp, own=_group_stem(final_name(tmp.name) or "") in own_stems)


def _group_stem(name: str) -> str | None:
    """The group a shard (``<stem>.tar``, ``<stem>-<k>.tar``) or record (``<stem>.json``) belongs to."""
    if name.endswith(".json"):
        return name[: -len(".json")]
    m = SHARD_NAME_RE.search(name)
    return name[: m.end(1)] if m else None


def remove_stale(directory: Path, prefix: str, keep_shards: set[str], keep_stems: set[str]) -> list[str]:
    """Delete shards and records an earlier, different build of this split left (full builds only)."""
    stale = [p for p in directory.glob(f"{prefix}-*.tar") if SHARD_NAME_RE.search(p.name) and p.name not in keep_shards]
    stale += [p for p in directory.glob(f".build/{prefix}-*.json") if p.stem not in keep_stems]
    for p in stale:
        p.unlink()
    return [p.name for p in stale]
