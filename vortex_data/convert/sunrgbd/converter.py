"""SUN RGB-D (``SUNRGBD/<sensor>/<subset>/.../<frame folder>/``) -> uniform samples.

A frame folder is recognised by what it holds (``image/``, ``depth/``, ``intrinsics.txt``), not
by how deep it sits: xtion/sun3ddata nests scene/sub/frame one level deeper than the others.
The 37-class labels come from the toolbox beside the tree (:mod:`.toolbox`).
Depth PNGs are bit-rotated (millimetres = 16-bit rotate-right by 3 of the stored value) and are
capped at 8 m as the official toolbox does. ``kv1/NYUdata`` holds the NYU Depth V2 frames again,
so it is left out by default and the manifest report says how many frames that removed.
See ``docs/sunrgbd.md``.
"""

from __future__ import annotations

import argparse
import os
import stat
from collections import Counter
from pathlib import Path
from typing import Any

from ...format.schema import Sample

from ...errors import InputError
from ...format.tar_index import make_key
from ..base import (Converter, Enumeration, FrameRef, RejectFrame, Rejection, input_sha256, os_reason,
                    scan_folder)
from .files import (DEPTH_MODES, MAX_DEPTH_MM, NOT_IN_SPLIT, NYU_OVERLAP_REASON, NYU_OVERLAP_SUBSET, SENSOR_SUBSETS,
                    FrameFiles, _is_dir, _read_text, cap_depth, find_frame_folders, locate_frame_files,
                    parse_intrinsics, parse_rtilt, read_depth_png, read_rgb, read_split_file, rotate_right_3)
from .toolbox import (LABEL_MODES, META_FILE, SEG_FILE, TOOLBOX_DIR, ToolboxLabels, check_toolbox_matches,
                      find_toolbox)


class SunRgbdConverter(Converter):
    name = "sunrgbd"
    description = "SUN RGB-D (kv1, kv2, realsense, xtion): bit-rotated depth PNGs, per-frame intrinsics, official split"
    splits = ("train", "test")

    def __init__(self, src: Path, depth: str = "raw", include_nyu_overlap: bool = False,
                 split_file: Path | None = None, labels: str = "auto", toolbox: Path | None = None):
        if depth not in DEPTH_MODES:
            raise InputError(f"depth mode must be one of {sorted(DEPTH_MODES)}, got {depth!r}")
        self.src = Path(src)
        if not self.src.is_dir():
            raise FileNotFoundError(f"{self.src}: SUN RGB-D root (the SUNRGBD/ folder) not found")
        self.depth = depth
        self.include_nyu_overlap = include_nyu_overlap
        self.split_file = None if split_file is None else Path(split_file)
        if self.split_file is not None and not self.split_file.is_file():
            raise FileNotFoundError(f"{self.split_file}: split file not found")
        if labels not in LABEL_MODES:
            raise InputError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
        if labels == "none" and toolbox is not None:
            raise InputError("--toolbox gives the labels' folder, but --labels none turns labels off")
        self.toolbox_files: dict[str, str] = {}
        self.labels, self.labels_origin = None, "off (--labels none)"
        if labels == "auto":
            folder, files = find_toolbox(self.src, toolbox)
            # The report names the folder looked at and each file in it, found or missing.
            self.toolbox_files = {str(folder / rel): "found" if ok else "missing" for rel, ok in files.items()}
            how = "given by --toolbox" if toolbox else "found beside --src"
            if all(files.values()):
                self.labels = ToolboxLabels(folder)
                self.labels_origin = f"{folder / SEG_FILE} {how}"
            elif not any(files.values()):
                self.labels_origin = (f"no {TOOLBOX_DIR}/ label files beside --src ({folder}) and no --toolbox: "
                                      f"depth only")
            else:
                missing = " and ".join(rel for rel, ok in files.items() if not ok)
                self.labels_origin = (f"{folder}: {missing} missing (both {SEG_FILE} and {META_FILE} are needed): "
                                      f"depth only; --toolbox DIR names a complete toolbox")

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--depth", choices=sorted(DEPTH_MODES), default="raw",
                           help="sunrgbd: 'raw' depth/ (0 and > 8 m invalid) or 'filled' depth_bfx/ (clipped to 8 m)")
        group.add_argument("--include-nyu-overlap", action="store_true",
                           help="sunrgbd: keep kv1/NYUdata (the NYU Depth V2 frames), left out by default")
        group.add_argument("--split-file", type=Path, default=None,
                           help="sunrgbd: official allsplit.mat; without it every frame is 'train'")
        group.add_argument("--labels", choices=LABEL_MODES, default="auto",
                           help="sunrgbd: 'auto' reads the toolbox's 37-class labels (SUNRGBDtoolbox/ beside --src as "
                                "given, a symlink not followed, or --toolbox) mapped to the 6 classes; 'none' writes "
                                "depth only")
        group.add_argument("--toolbox", type=Path, default=None,
                           help="sunrgbd: the SUNRGBDtoolbox/ folder (Metadata/SUNRGBD2Dseg.mat, SUNRGBDMeta.mat)")

    @classmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> "SunRgbdConverter":
        return cls(src, depth=getattr(args, "depth", "raw"),
                   include_nyu_overlap=getattr(args, "include_nyu_overlap", False),
                   split_file=getattr(args, "split_file", None), labels=getattr(args, "labels", "auto"),
                   toolbox=getattr(args, "toolbox", None))

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"depth": self.depth, "include_nyu_overlap": self.include_nyu_overlap,
                                "max_depth_mm": MAX_DEPTH_MM, "split_file": None}
        if self.split_file is not None:
            opts["split_file"] = self.split_file.name
            opts["split_file_sha256"] = input_sha256(self.split_file)
        opts["labels"] = "toolbox-37" if self.labels is not None else "none"
        if self.labels is not None:
            opts.update(self.labels.options())
        return opts

    # -------------------------------------------------------- enumerate

    def enumerate(self, splits: set[str] | None) -> Enumeration:
        split_of = read_split_file(self.split_file) if self.split_file is not None else None
        wanted = set(self.splits) if splits is None else set(splits)
        frames: list[FrameRef] = []
        rejected: list[Rejection] = []
        counts: dict[str, Counter] = {}
        excluded = 0
        unlabelled: list[str] = []
        seen: set[str] = set()
        subset_dirs, blocked = self._subset_dirs()
        for bad, err in blocked:
            rejected += self._unlistable(bad, err, split_of, wanted, seen)
        for subset_dir in subset_dirs:
            subset = subset_dir.relative_to(self.src).as_posix()
            unlistable: list[tuple[Path, OSError]] = []
            folders = find_frame_folders(subset_dir, unlistable)
            for bad, err in unlistable:
                rejected += self._unlistable(bad, err, split_of, wanted, seen)
            for folder in folders:
                rel = folder.relative_to(self.src).as_posix()
                seen.add(rel)
                split = "train" if split_of is None else split_of.get(rel, NOT_IN_SPLIT)
                if subset == NYU_OVERLAP_SUBSET and not self.include_nyu_overlap:
                    excluded += split in wanted or split == NOT_IN_SPLIT
                    continue
                if split == NOT_IN_SPLIT:
                    rejected.append(Rejection(rel, split, "not-in-split",
                                              f"{folder}: frame folder is listed in neither alltrain nor alltest of {self.split_file}",
                                              rel))
                    continue
                if split not in wanted:
                    continue
                counts.setdefault(subset, Counter())[split] += 1
                try:
                    ff = locate_frame_files(self.src, folder, DEPTH_MODES[self.depth])
                except RejectFrame as e:
                    rejected.append(Rejection(rel, split, e.code, e.reason, self._rel(e.file)))
                    continue
                files = tuple(f for f in (ff.image, ff.depth, ff.intrinsics, ff.extrinsics, ff.scene) if f)
                if self.labels is not None:
                    ff = ff._replace(label_entry=self.labels.entry_of.get(rel))
                    if ff.label_entry is None:
                        unlabelled.append(rel)
                frames.append(FrameRef(split=split, frame_id=rel, files=files, payload=ff))
        if not seen and not rejected:
            raise InputError(self._empty_message())
        if self.labels is not None:
            check_toolbox_matches(self.labels, self.src, frames)
        report = self._report(counts, excluded, split_of, seen, wanted)
        report["labels"] = self.labels_origin
        if self.toolbox_files:
            report["toolbox_files"] = self.toolbox_files
        if self.labels is not None:
            # Written depth-only, not rejected: their depth is as good as any other frame's.
            report["frames_without_labels"] = len(unlabelled)
            report["frames_without_labels_examples"] = unlabelled[:10]
        return Enumeration(frames=frames, rejected=rejected, report=report)

    def _empty_message(self) -> str:
        """No frame folder anywhere below --src: what the converter looked for, and where it may be."""
        layout = ", ".join(f"{s}/{sub}" for s, subs in SENSOR_SUBSETS.items() for sub in subs)
        inner = next((p for p in (self.src / "SUNRGBD", self.src / "SUNRGBD" / "SUNRGBD") if _is_dir(p)), None)
        hint = f"; {inner} looks like it: give --src {inner}" if inner is not None else ""
        return (f"{self.src}: no SUN RGB-D frame folder found. --src must be the SUNRGBD/ folder, laid out "
                f"<sensor>/<subset>/.../<frame folder>/ with image/*.jpg, depth/*.png and intrinsics.txt in each "
                f"frame folder, for the subsets {layout}{hint}")

    def _unlistable(self, folder: Path, err: OSError, split_of: dict[str, str] | None, wanted: set[str],
                    seen: set[str]) -> list[Rejection]:
        """Rejections for a folder that cannot be listed: each frame the split file puts below it,
        or the folder itself (its frames are unknown), so no frame disappears without a trace."""
        rel = folder.relative_to(self.src).as_posix()
        if (rel == NYU_OVERLAP_SUBSET or rel.startswith(NYU_OVERLAP_SUBSET + "/")) and not self.include_nyu_overlap:
            return []
        why = f"cannot be listed ({os_reason(err)}), so its frames cannot be converted"
        if split_of is None:
            return [Rejection(rel, "train", "unreadable", f"{folder}: folder {why}", rel)]
        below = sorted(k for k in split_of if (k == rel or k.startswith(rel + "/")) and k not in seen)
        seen.update(below)
        if not below:
            return [Rejection(rel, NOT_IN_SPLIT, "unreadable", f"{folder}: folder {why}", rel)]
        return [Rejection(k, split_of[k], "unreadable", f"{self.src / k}: in folder {folder}, which {why}", rel)
                for k in below if split_of[k] in wanted]

    def _subset_dirs(self) -> tuple[list[Path], list[tuple[Path, OSError]]]:
        """The subset folders present, and those that cannot even be looked at (with the error)."""
        found, blocked = [], []
        for s, subs in SENSOR_SUBSETS.items():
            for sub in subs:
                path = self.src / s / sub
                try:
                    if stat.S_ISDIR(os.stat(path).st_mode):
                        found.append(path)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                except OSError as e:
                    blocked.append((path, e))
        return found, blocked

    def _rel(self, file: str | None) -> str | None:
        if file is None:
            return None
        try:
            return Path(file).relative_to(self.src).as_posix()
        except ValueError:
            return file

    def _unknown_folders(self) -> list[str]:
        """Folders under the root that are no known sensor/subset: listed so nothing is skipped unseen."""
        out = []
        sensors, err = scan_folder(self.src)
        if err is not None:
            return [f". (cannot be listed: {os_reason(err)})"]
        for sensor in (p for p in sensors if _is_dir(p)):
            if sensor.name not in SENSOR_SUBSETS:
                out.append(sensor.name)
                continue
            subsets, err = scan_folder(sensor)
            if err is not None:
                out.append(f"{sensor.name} (cannot be listed: {os_reason(err)})")
            out += [f"{sensor.name}/{q.name}" for q in subsets
                    if _is_dir(q) and q.name not in SENSOR_SUBSETS[sensor.name]]
        return out

    def _report(self, counts: dict[str, Counter], excluded: int, split_of: dict[str, str] | None,
                seen: set[str], wanted: set[str]) -> dict[str, Any]:
        known = {f"{s}/{sub}" for s, subs in SENSOR_SUBSETS.items() for sub in subs}
        present = {d.relative_to(self.src).as_posix() for d in self._subset_dirs()[0]}
        report: dict[str, Any] = {
            "frames_per_subset": {k: dict(sorted(v.items())) for k, v in sorted(counts.items())},
            "subsets_missing": sorted(known - present),
            "folders_not_read": self._unknown_folders(),
            "depth": f"{self.depth} ({DEPTH_MODES[self.depth]}/), > {MAX_DEPTH_MM} mm "
                     + ("invalid" if self.depth == "raw" else "clipped"),
        }
        if self.include_nyu_overlap:
            report["nyu_overlap"] = "included (--include-nyu-overlap)"
        else:
            report["excluded_nyu_overlap"] = excluded
            report["reason"] = NYU_OVERLAP_REASON
        if split_of is not None:
            listed_missing = sorted(k for k, s in split_of.items() if s in wanted and k not in seen
                                    and (self.include_nyu_overlap or not k.startswith(NYU_OVERLAP_SUBSET + "/")))
            report["split_listed_but_missing"] = len(listed_missing)
            report["split_listed_but_missing_examples"] = listed_missing[:10]
        return report

    # -------------------------------------------------------- load

    def load(self, ref: FrameRef) -> Sample:
        ff: FrameFiles = ref.payload
        root = self.src
        intrinsics_path = root / ff.intrinsics
        k = parse_intrinsics(_read_text(intrinsics_path), intrinsics_path)
        rgb = read_rgb(root / ff.image)
        depth_path = root / ff.depth
        decoded = cap_depth(rotate_right_3(read_depth_png(depth_path)), self.depth)
        if decoded.depth_mm.shape != rgb.shape[:2]:
            raise RejectFrame("bad-shape", f"{depth_path}: depth is {decoded.depth_mm.shape[::-1]} (WxH) but image "
                              f"{root / ff.image} is {rgb.shape[1::-1]}", depth_path)
        if not decoded.depth_mm.any():
            raise RejectFrame("no-valid-depth", f"{depth_path}: no valid depth pixel after decoding", depth_path)
        meta: dict[str, Any] = {
            "sensor": ff.sensor,
            "subset": ff.subset,
            "folder": ff.folder,
            "source_files": list(ref.files),
            "depth_mode": self.depth,
            "depth_beyond_8m": decoded.beyond_cap,
            "depth_beyond_8m_action": "invalidated" if self.depth == "raw" else "clipped",
        }
        seg = None
        if ff.label_entry is not None and self.labels is not None:
            # SUN RGB-D labels are drawn on the stored image, so they need no geometry but the check.
            seg, outside = self.labels.seg6(ff.label_entry, rgb.shape[:2])
            meta["label_entry"] = ff.label_entry + 1
            if seg is None:  # MATLAB's [] for this frame: its depth is as good as any other's
                meta["label_source"] = "none: the toolbox entry is empty"
            else:
                meta["label_source"] = "sunrgbd37->nyu40->6"
            if outside:
                meta["label_pixels_outside_37"] = outside
        if ff.extrinsics is not None:
            path = root / ff.extrinsics
            meta["rtilt"] = parse_rtilt(_read_text(path), path)
        # scene.txt names a kind of room ("bedroom"), not a place; the unit a split must keep on one
        # side is the frame folder (sun3ddata: the capture folder above its frames).
        meta["scene"] = "/".join(ff.folder.split("/")[:3])
        if ff.scene is not None:
            meta["scene_type"] = _read_text(root / ff.scene).strip()
        return Sample(
            key=make_key(self.name, ref.split, ref.frame_id),
            rgb=rgb,
            depth_mm=decoded.depth_mm,
            intrinsics=k,
            seg=seg,
            meta=meta,
            rejected_depth_pixels=decoded.beyond_cap if self.depth == "raw" else 0,
        )
