"""DIODE (Dense Indoor and Outdoor DEpth): `{train,val}/{indoors,outdoor}/scene_*/scan_*/`.

Per frame ``<stem>.png`` (RGB), ``<stem>_depth.npy`` ((H, W, 1) float32 metres) and
``<stem>_depth_mask.npy`` ((H, W), 1 = valid laser return). Frames are enumerated from disk:
the devkit's ``diode_meta.json`` is incomplete (it lists 220 val-indoor frames, the released
archive holds 325), so it is only used, with ``--meta``, to report frames it lists that the
disk lacks. Intrinsics are the devkit's computational camera: fx 886.81, fy 927.06, cx 512, cy 384.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..format.schema import Sample, depth_to_mm

from ..format.geometry import Intrinsics

from ..errors import InputError
from ..format.tar_index import make_key
from .base import Converter, Enumeration, FrameRef, Rejection, RejectFrame, os_reason, scan_folder
from .image_files import read_image

INTRINSICS = Intrinsics(fx=886.81, fy=927.06, cx=512.0, cy=384.0)
NATIVE_SIZE = (1024, 768)
DOMAINS = ("indoors", "outdoor")
_SUFFIXES = {"rgb": ".png", "depth": "_depth.npy", "mask": "_depth_mask.npy"}


class DiodeConverter(Converter):
    name = "diode"
    description = "DIODE RGB-D (train/val, indoors/outdoor); depth .npy in metres with validity masks"
    splits = ("train", "val")

    def __init__(self, src: Path, domain: str = "indoors", meta: Path | None = None):
        if domain not in (*DOMAINS, "all"):
            raise InputError(f"DIODE domain must be indoors, outdoor or all, got {domain!r}")
        self.src = Path(src)
        self.domain = domain
        self.meta = None if meta is None else Path(meta)

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--domain", choices=[*DOMAINS, "all"], default="indoors",
                           help="which DIODE domain to convert (default: indoors, as the training program uses)")
        group.add_argument("--meta", type=Path, default=None,
                           help="the devkit's diode_meta.json: report frames it lists that are missing on disk")

    @classmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> "DiodeConverter":
        return cls(src, domain=args.domain, meta=args.meta)

    def options(self) -> dict[str, Any]:
        return {"domain": self.domain}

    def _domains(self) -> tuple[str, ...]:
        return DOMAINS if self.domain == "all" else (self.domain,)

    def enumerate(self, splits: set[str] | None) -> Enumeration:
        if not self.src.is_dir():
            raise FileNotFoundError(f"{self.src}: DIODE root folder not found (expected {{train,val}}/{{indoors,outdoor}}/...)")
        unknown = (splits or set()) - set(self.splits)
        if unknown:
            raise InputError(f"DIODE has splits {self.splits}, not {sorted(unknown)}")
        frames, rejected = [], []
        found_any = False
        for split in self.splits:
            if splits and split not in splits:
                continue
            for domain in self._domains():
                base = self.src / split / domain
                if not base.is_dir():
                    continue
                found_any = True
                f, r = _walk_domain(self.src, base, split)
                frames += f
                rejected += r
        if not found_any:
            raise FileNotFoundError(
                f"{self.src}: no {'/'.join(self._domains())} folders under train/ or val/; is this a DIODE root?")
        report: dict[str, Any] = {"frames_per_scene": _count_scenes(frames)}
        if self.meta is not None:
            report["meta"] = _compare_meta(self.meta, frames, rejected, self._domains(), splits)
        return Enumeration(frames, rejected, report)

    def load(self, ref: FrameRef) -> Sample:
        rgb_rel, depth_rel, mask_rel = ref.files
        rgb_path, depth_path, mask_path = (self.src / p for p in ref.files)
        bgr = read_image(rgb_path, cv2.IMREAD_COLOR, rgb_rel)
        depth = _load_npy(depth_path, depth_rel)
        mask = _load_npy(mask_path, mask_rel)
        h, w = bgr.shape[:2]
        if depth.dtype != np.float32:
            raise RejectFrame("bad-dtype", f"{depth_rel}: depth dtype {depth.dtype}, expected float32 metres", depth_rel)
        if depth.shape == (h, w, 1):
            depth = depth[..., 0]
        if depth.shape != (h, w):
            raise RejectFrame("bad-shape", f"{depth_rel}: depth shape {depth.shape}, expected ({h}, {w}, 1) to match "
                              f"the RGB", depth_rel)
        if mask.shape != (h, w):
            raise RejectFrame("bad-shape", f"{mask_rel}: mask shape {mask.shape}, expected ({h}, {w})", mask_rel)
        if not np.isin(np.unique(mask), (0, 1)).all():
            raise RejectFrame("bad-value", f"{mask_rel}: mask holds values other than 0 and 1", mask_rel)
        conv = depth_to_mm(depth, valid=mask.astype(bool))
        if not conv.depth_mm.any():
            raise RejectFrame("no-valid-depth", f"{depth_rel}: no valid depth pixel (mask and values)", depth_rel)
        scene, scan = Path(rgb_rel).parts[-3:-1]
        sx, sy = w / NATIVE_SIZE[0], h / NATIVE_SIZE[1]
        return Sample(
            key=make_key(self.name, ref.split, ref.frame_id),
            rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
            depth_mm=conv.depth_mm,
            intrinsics=INTRINSICS if (sx, sy) == (1, 1) else INTRINSICS.scaled(sx, sy),
            meta={"source_files": list(ref.files), "sensor": "FARO Focus S350 laser scanner",
                  "domain": Path(rgb_rel).parts[1], "scene": scene, "scan": scan,
                  "depth_nonfinite": conv.nonfinite, "depth_negative": conv.negative, "depth_too_far": conv.too_far},
            depth_range_m=(0.6, 350.0),
            rejected_depth_pixels=conv.rejected,
        )


def _load_npy(path: Path, rel: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise RejectFrame("missing-file", f"{rel}: file missing", rel) from None
    except (ValueError, OSError, EOFError) as e:
        raise RejectFrame("unreadable", f"{rel}: not a readable .npy ({e})", rel) from None


def _walk_domain(root: Path, base: Path, split: str) -> tuple[list[FrameRef], list[Rejection]]:
    """Every frame stem under one split/domain, in sorted order; incomplete frames are rejected."""
    frames, rejected = [], []

    def unlistable(folder: Path, err: OSError) -> None:
        rel = folder.relative_to(root).as_posix()
        rejected.append(Rejection(rel, split, "unreadable",
                                  f"{rel}: folder cannot be listed ({os_reason(err)}); none of its frames is converted",
                                  rel))

    scan_dirs = []
    scenes, err = scan_folder(base)
    if err is not None:
        unlistable(base, err)
    for scene in (p for p in scenes if p.name.startswith("scene_") and p.is_dir()):
        scans, err = scan_folder(scene)
        if err is not None:
            unlistable(scene, err)
        scan_dirs += [p for p in scans if p.name.startswith("scan_") and p.is_dir()]
    for scan_dir in scan_dirs:
        entries, err = scan_folder(scan_dir)
        if err is not None:
            unlistable(scan_dir, err)
            continue
        stems: dict[str, set[str]] = {}
        for f in entries:
            for part, suffix in sorted(_SUFFIXES.items(), key=lambda kv: -len(kv[1])):
                if f.name.endswith(suffix):
                    stems.setdefault(f.name[: -len(suffix)], set()).add(part)
                    break
        for stem in sorted(stems):
            rel = {p: str((scan_dir / (stem + s)).relative_to(root)) for p, s in _SUFFIXES.items()}
            missing = [p for p in ("rgb", "depth", "mask") if p not in stems[stem]]
            if missing:
                rejected.append(Rejection(stem, split, "missing-file",
                                          f"{rel[missing[0]]}: missing ({', '.join(missing)} absent for this frame)",
                                          rel[missing[0]]))
                continue
            frames.append(FrameRef(split, stem, (rel["rgb"], rel["depth"], rel["mask"])))
    return frames, rejected


def _count_scenes(frames: list[FrameRef]) -> dict[str, int]:
    return dict(sorted(Counter(f"{f.split}/{Path(f.files[0]).parts[1]}/{Path(f.files[0]).parts[2]}"
                               for f in frames).items()))


def _compare_meta(meta_path: Path, frames: list[FrameRef], rejected: list[Rejection],
                  domains: tuple[str, ...], splits: set[str] | None) -> dict[str, Any]:
    """What the devkit index lists versus what is on disk (the index is known to be incomplete)."""
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{meta_path}: cannot read DIODE meta JSON ({e})") from None
    listed = {}
    for split, by_domain in meta.items():
        if splits and split not in splits:
            continue
        for domain in domains:
            for scene, scans in by_domain.get(domain, {}).items():
                for scan, stems in scans.items():
                    for stem in stems:
                        listed[(split, stem)] = f"{split}/{domain}/{scene}/{scan}/{stem}"
    on_disk = {(f.split, f.frame_id) for f in frames} | {(r.split, r.frame) for r in rejected}
    missing = sorted(v for k, v in listed.items() if k not in on_disk)
    return {"file": str(meta_path), "listed": len(listed), "missing_on_disk": len(missing),
            "missing_examples": missing[:50], "on_disk_not_listed": len(on_disk - set(listed))}
