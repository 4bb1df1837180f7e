"""Parallel, deterministic, atomic, resumable shard writing.

The plan is a pure function of the converter's frame list: frames are cut, in enumeration order,
into *groups* of at most ``shard_samples`` frames; group ``g`` of ``<dataset>/<split>`` becomes
``<dataset>-<split>-<g:06d>.tar`` (and ``...-<g:06d>-<k>.tar`` continuations when a group
overflows ``shard_bytes``). Because a group is always written by one process, in order, with
fixed tar metadata, the bytes do not depend on the worker count or on the SLURM task split.

Each finished group leaves a small record in ``<shard dir>/.build/`` (shard checksums, index rows,
rejections, and the size and mtime of every source file of its frames; build_records.py). Shards are written under
a temporary name and renamed when complete; the record is written last. A rerun keeps every group
whose record matches the build, whose source files are unchanged and whose shards still hash to
the recorded sha256, and rebuilds the rest, so a killed build resumes without duplicates and a
changed source frame is converted again.

Temporaries carry the writer's task index, host and pid and are flock-ed while written
(temporaries.py): at start a task removes only its own groups' leftovers and temporaries that
are provably abandoned, so staggered SLURM array tasks on one folder never delete each other's
work. Pool workers die with their parent (pool.py).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm import tqdm

from .. import __version__
from ..cpus import usable_cpus
from ..errors import Interrupted, VortexError
from ..format.integrity import CHECKSUM_COLUMN, member_checksums, member_spans
from ..format.manifest import Manifest, atomic_write_bytes, compute_totals, is_labelled, write_manifest
from ..format.schema import (IGNORE_INDEX, NUM_CLASSES, SCHEMA_VERSION, EncodeOptions, Sample, encode_sample,
                             resize_sample)
from ..format.tar_index import dataset_split, make_key
from ..pool import worker_pool
from ..temporaries import reraise_naming, writer_tag
from .base import Converter, FrameRef, Rejection, RejectFrame, is_utf8_name, printable_path
from .build_records import group_sources, record_path, remove_stale, remove_temporaries, reusable_record, source_fingerprint
from .tar_writer import RollingTar

DEFAULT_SHARD_SAMPLES = 256
DEFAULT_SHARD_BYTES = 512 * 2**20


class BuildError(VortexError, RuntimeError):
    """A build that cannot proceed (duplicate keys, bad options); the message says what to fix."""


@dataclass(frozen=True)
class BuildConfig:
    out_dir: Path = Path("shards")
    manifest_dir: Path = Path("manifests")
    splits: frozenset[str] | None = None
    shard_samples: int = DEFAULT_SHARD_SAMPLES
    shard_bytes: int = DEFAULT_SHARD_BYTES
    encode: EncodeOptions = EncodeOptions()
    resize: int | None = None
    workers: int = field(default_factory=usable_cpus)
    num_tasks: int = 1
    task_index: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.shard_samples < 1 or self.shard_bytes < 1:
            raise BuildError("shard limits must be positive")
        if not 0 <= self.task_index < self.num_tasks:
            raise BuildError(f"task index {self.task_index} is outside 0..{self.num_tasks - 1}")

    def output_options(self) -> dict[str, Any]:
        """Options that change the bytes written (recorded in the manifest, part of the build id)."""
        return {"encode": asdict(self.encode), "resize": self.resize,
                "shard_samples": self.shard_samples, "shard_bytes": self.shard_bytes}


@dataclass
class Group:
    dataset: str
    split: str
    index: int
    frames: list[FrameRef]
    keys: list[str]
    build_id: str
    sources: str = ""
    """Fingerprint of the frames' source files (see :func:`group_sources`); set before writing."""

    @property
    def stem(self) -> str:
        return f"{self.dataset}-{self.split}-{self.index:06d}"


@dataclass
class BuildResult:
    manifests: list[Path]
    groups_built: int
    groups_reused: int


# ---------------------------------------------------------------- planning

def plan_groups(dataset: str, split: str, frames: list[FrameRef], shard_samples: int,
                build_salt: str) -> list[Group]:
    """Cut a split's frames into shard groups. Pure: the same frames give the same plan."""
    keys = [make_key(dataset, split, f.frame_id) for f in frames]
    dups = sorted({k for k in keys if keys.count(k) > 1}) if len(set(keys)) != len(keys) else []
    if dups:
        raise BuildError(f"{dataset}/{split}: frames map to duplicate keys {dups[:5]}; frame ids must be unique")
    groups = []
    for g, start in enumerate(range(0, len(frames), shard_samples)):
        chunk_keys = keys[start:start + shard_samples]
        bid = hashlib.sha256((build_salt + "\n" + "\n".join(chunk_keys)).encode()).hexdigest()
        groups.append(Group(dataset, split, g, frames[start:start + shard_samples], chunk_keys, bid))
    return groups


def build_salt(converter: Converter, cfg: BuildConfig) -> str:
    return json.dumps({"schema": SCHEMA_VERSION, "converter": converter.name, "options": converter.options(),
                       "output": cfg.output_options()}, sort_keys=True)


# ---------------------------------------------------------------- writing one group

def index_row(key: str, shard: str, sample: Sample) -> dict[str, Any]:
    """Per-sample statistics for the Parquet index (depth in metres, over valid pixels)."""
    d = sample.depth_mm
    valid = d[d > 0]
    if valid.size:
        dmin, dmed, dmax = float(valid.min()) / 1000, float(np.median(valid)) / 1000, float(valid.max()) / 1000
    else:
        dmin = dmed = dmax = float("nan")
    if sample.seg is not None:
        counts = np.bincount(sample.seg.ravel(), minlength=256)
        class_pixels, ignore = counts[:NUM_CLASSES].tolist(), int(counts[IGNORE_INDEX])
    else:
        class_pixels, ignore = [0] * NUM_CLASSES, int(d.size)
    k = sample.intrinsics
    return {"key": key, "shard": shard, "width": sample.width, "height": sample.height,
            "valid_fraction": float(valid.size / d.size), "depth_min_m": dmin, "depth_median_m": dmed,
            "depth_max_m": dmax, "has_seg": sample.seg is not None, "class_pixels": class_pixels,
            "ignore_pixels": ignore, "rejected_depth_pixels": int(sample.rejected_depth_pixels),
            "fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy,
            "scene": sample.meta["scene"] if isinstance(sample.meta.get("scene"), str) else None,  # escaped in _load_one
            **dict(zip(("dataset", "split"), dataset_split(key)))}


def _printable_meta(value: Any) -> Any:
    """Metadata with every string made UTF-8-safe (file names are copied into it)."""
    if isinstance(value, str):
        return printable_path(value)
    if isinstance(value, dict):
        return {printable_path(k) if isinstance(k, str) else k: _printable_meta(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_printable_meta(v) for v in value)
    return value


def _load_one(converter: Converter, ref: FrameRef, key: str, cfg: BuildConfig) -> Sample:
    sample = converter.load(ref)
    sample.key = key
    sample.meta = _printable_meta(sample.meta)
    if cfg.resize:
        sample = resize_sample(sample, cfg.resize)
    return sample


def _convert(converter: Converter, ref: FrameRef, key: str, cfg: BuildConfig) -> tuple[Sample, list] | Rejection:
    """The frame's sample and tar members, or its Rejection. Any exception a converter raises for
    one frame rejects that frame (code 'error', naming the exception and the file): one bad input
    must not end a build of millions."""
    try:
        sample = _load_one(converter, ref, key, cfg)
        return sample, encode_sample(sample, cfg.encode)
    except RejectFrame as e:
        return Rejection(ref.frame_id, ref.split, e.code, e.reason, e.file)
    except Exception as e:  # noqa: BLE001 -- see the docstring
        file = ref.files[0] if ref.files else None
        return Rejection(ref.frame_id, ref.split, "error", f"{file or ref.frame_id}: {type(e).__name__}: {e}", file)


def write_group(converter: Converter, group: Group, cfg: BuildConfig) -> dict[str, Any]:
    """Convert and write one group; returns (and stores) its build record."""
    directory = split_dir(cfg, group.dataset, group.split)
    tag = writer_tag(cfg.task_index)
    writer = RollingTar(directory, group.stem, cfg.shard_bytes, tag)
    rows, rejected, depth_rejected = [], [], 0
    try:
        for ref, key in zip(group.frames, group.keys):
            out = _convert(converter, ref, key, cfg)
            if isinstance(out, Rejection):
                rejected.append(out.as_dict())
                continue
            sample, members = out
            shard, offsets = writer.add(key, members)
            rows.append({**index_row(key, shard, sample), CHECKSUM_COLUMN: member_checksums(members),
                         **member_spans(offsets, members)})
            depth_rejected += sample.rejected_depth_pixels
        shards = writer.finish()
    except BaseException as e:
        reraise_naming(e, writer.abort() or directory)
    record = {"build_id": group.build_id, "group": group.index, "sources": group.sources, "shards": shards,
              "index": rows, "rejected": rejected, "depth_rejected_pixels": depth_rejected}
    atomic_write_bytes(_record_path(cfg, group), json.dumps(record, sort_keys=True).encode(), tag)
    return record


# ---------------------------------------------------------------- resume

def split_dir(cfg: BuildConfig, dataset: str, split: str) -> Path:
    return cfg.out_dir / dataset / split


def _record_path(cfg: BuildConfig, group: Group) -> Path:
    return record_path(split_dir(cfg, group.dataset, group.split), group.stem)


# ---------------------------------------------------------------- the build

def _split_off_bad_names(frames: list[FrameRef]) -> tuple[list[FrameRef], list[Rejection]]:
    """Frames whose id is not UTF-8 (a file or folder name with other bytes) cannot become a
    sample key: they are rejected, the name shown with ``\\xNN`` escapes."""
    good, bad = [], []
    for f in frames:
        if is_utf8_name(f.frame_id):
            good.append(f)
        else:
            file = f.files[0] if f.files else f.frame_id
            bad.append(Rejection(f.frame_id, f.split, "bad-name",
                                 f"{file}: file name is not UTF-8, so it cannot be a sample key; rename it", file))
    return good, bad


def build_shards(converter: Converter, cfg: BuildConfig) -> BuildResult:
    """Convert the requested splits into shards and manifests; returns the manifests written.

    With ``num_tasks > 1`` this task writes only groups ``g % num_tasks == task_index`` and a
    part manifest; ``vortex-data merge-manifests`` joins the parts.
    """
    enum = converter.enumerate(set(cfg.splits) if cfg.splits else None)
    enum.frames, bad_names = _split_off_bad_names(enum.frames)
    enum.rejected = enum.rejected + bad_names
    salt = build_salt(converter, cfg)
    by_split: dict[str, list[FrameRef]] = {}
    for f in enum.frames:
        by_split.setdefault(f.split, []).append(f)
    for r in enum.rejected:
        by_split.setdefault(r.split, [])
    plans = {s: plan_groups(converter.name, s, frames, cfg.shard_samples, salt) for s, frames in sorted(by_split.items())}

    mine = [g for groups in plans.values() for g in groups if g.index % cfg.num_tasks == cfg.task_index]
    records: dict[tuple[str, int], dict[str, Any]] = {}
    todo = []
    for g in mine:
        g.sources = group_sources(converter, g.frames)
    for split in plans:
        d = split_dir(cfg, converter.name, split)
        (d / ".build").mkdir(parents=True, exist_ok=True)
        remove_temporaries(d, {g.stem for g in mine if g.split == split})
    for g in mine:
        rec = reusable_record(_record_path(cfg, g), g.build_id, g.sources)
        if rec is None:
            todo.append(g)
        else:
            records[(g.split, g.index)] = _slim(rec)
    reused = len(records)
    total_frames = sum(len(g.frames) for g in todo)
    bar = tqdm(total=total_frames, unit="frame", desc=f"{converter.name}", disable=not cfg.progress)
    try:
        _write_groups(converter, cfg, todo, records, bar)
    except KeyboardInterrupt:
        # Groups finished so far (their records are on disk, even those whose result was not
        # collected yet) are what a rerun keeps; the rest is rebuilt.
        bar.close()
        kept = sum(_record_path(cfg, g).is_file() for g in mine)
        raise Interrupted(f"{kept} of {len(mine)} shard groups of {converter.name} are written and kept under "
                          f"{cfg.out_dir}; rerun the same command to resume") from None
    bar.close()

    manifests = []
    part = (cfg.task_index, cfg.num_tasks) if cfg.num_tasks > 1 else None
    for split, groups in plans.items():
        groups_here = [g for g in groups if (split, g.index) in records]
        split_rejected = [r for r in enum.rejected if r.split == split]
        fingerprint = source_fingerprint(converter.source_root(), by_split[split], split_rejected)
        # Enumeration-time rejections are listed once, by task 0, so merged parts count each frame once.
        manifests.append(_assemble_manifest(converter, cfg, split, groups_here, records,
                                            split_rejected if cfg.task_index == 0 else [], enum.report,
                                            fingerprint, part))
        if part is None:
            keep = {s["name"] for g in groups_here for s in records[(split, g.index)]["shards"]}
            remove_stale(split_dir(cfg, converter.name, split), f"{converter.name}-{split}", keep,
                          {g.stem for g in groups})
    return BuildResult(manifests, groups_built=len(todo), groups_reused=reused)


def _write_groups(converter: Converter, cfg: BuildConfig, todo: list[Group], records: dict, bar: tqdm) -> None:
    """Write the groups ``todo``, adding each one's slim record to ``records`` as it finishes."""
    if cfg.workers <= 1 or len(todo) <= 1:
        for g in todo:
            records[(g.split, g.index)] = _slim(write_group(converter, g, cfg))
            bar.update(len(g.frames))
        return
    ctx = multiprocessing.get_context("spawn")
    with worker_pool(min(cfg.workers, len(todo)), ctx) as pool:
        futures = {pool.submit(write_group, converter, g, cfg): g for g in todo}
        try:
            for fut in as_completed(futures):
                g = futures[fut]
                records[(g.split, g.index)] = _slim(fut.result())
                bar.update(len(g.frames))
        except BrokenProcessPool:
            left = [g for g in todo if (g.split, g.index) not in records]
            raise BuildError(
                f"a worker process died (killed, out of memory, or a crash in native code) with {len(left)} "
                f"shard groups unfinished ({', '.join(f'{g.split}/{g.stem}' for g in left[:5])}"
                f"{', ...' if len(left) > 5 else ''}); finished groups are kept, so rerun to resume, "
                "or rerun with --workers 1 to see the frame it happens on") from None


def _assemble_manifest(converter: Converter, cfg: BuildConfig, split: str, groups: list[Group],
                       records: dict, enum_rejected: list[Rejection], report: dict, fingerprint: dict,
                       part: tuple[int, int] | None) -> Path:
    shard_dir = split_dir(cfg, converter.name, split).resolve()
    cfg.manifest_dir.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(shard_dir, cfg.manifest_dir.resolve())
    shards, rejected, depth_rejected = [], [r.as_dict() for r in enum_rejected], 0
    for g in groups:
        rec = records[(split, g.index)]
        shards += [{"path": f"{rel}/{s['name']}", "samples": s["samples"], "bytes": s["bytes"], "sha256": s["sha256"]}
                   for s in rec["shards"]]
        rejected += rec["rejected"]
        depth_rejected += rec["depth_rejected_pixels"]
    rejected.sort(key=lambda r: r["frame"])
    m = Manifest(
        dataset=converter.name, split=split,
        converter={"name": converter.name, "vortex_data_version": __version__, "options": converter.options(),
                   "output": cfg.output_options()},
        source=fingerprint,
        shards=shards, rejected=rejected,
        totals=compute_totals(shards, rejected, {"depth_rejected_pixels": depth_rejected},
                              labelled=sum(records[(split, g.index)]["labelled"] for g in groups)),
        report=report,
        part=None if part is None else {"index": part[0], "count": part[1]},
    )
    return write_manifest(m, cfg.manifest_dir, _index_rows(cfg, groups, rel))


def _slim(record: dict[str, Any]) -> dict[str, Any]:
    """A group's record without its index rows: those stay in its file until the manifest is
    written (:func:`_index_rows`), so the build's memory does not grow with the dataset."""
    return {**{k: v for k, v in record.items() if k != "index"},
            "labelled": sum(map(is_labelled, record["index"]))}


def _index_rows(cfg: BuildConfig, groups: list[Group], rel: str) -> Iterator[dict[str, Any]]:
    """The index rows of the groups, in order, read back from their records one group at a time."""
    for g in groups:
        for r in json.loads(_record_path(cfg, g).read_bytes())["index"]:
            yield {**r, "shard": f"{rel}/{r['shard']}"}
