"""NYU Depth V2 synchronised export (the BTS / AdaBins ``sync`` folders) -> Samples.

Layout: ``<root>/<scene>/rgb_%05d.jpg`` and ``<root>/<scene>/sync_depth_%05d.png``, written by
BTS's ``sync_project_frames_multi_threads.m`` from the raw captures with the NYU toolbox: RGB
undistorted, depth projected into the RGB camera and stored as ``uint16(metres * 1000)``, 640x480,
0 = no depth. The depth written is the PNG's millimetres, unchanged; intrinsics are the NYU RGB
camera's (the labelled converter's, one definition).

Frames come from the folders, or, with ``--list``, from a list in the format BTS and AdaBins
share (``nyudepthv2_train_files_with_gt.txt``): per line ``/<scene>/rgb_N.jpg
/<scene>/sync_depth_N.png FOCAL``, whitespace-separated, paths relative to the root (their
loaders join ``root + "./" + path``), the third column the focal length in pixels. Then exactly
the listed frames are inputs: a listed file that is missing, a line that does not parse, a
repeated line or a focal length other than the camera's is a rejection with its reason (the
list line named); frames on disk but not listed are only counted in the report.

Every frame of an NYU evaluation room is left out unless allowed (:mod:`.eval_scenes`).
"""

from __future__ import annotations

import argparse
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ...errors import InputError
from ...format.schema import Sample
from ...format.tar_index import make_key
from ..base import Converter, Enumeration, FrameRef, Rejection, RejectFrame, os_reason, scan_folder
from ..image_files import read_image
from . import eval_scenes as evs
from .camera import HEIGHT, MAX_DEPTH_M, RGB_CAMERA, WIDTH

RGB_NAME = re.compile(r"rgb_(\d+)\.jpg")
DEPTH_NAME = re.compile(r"sync_depth_(\d+)\.png")
FOCAL_TOLERANCE_PX = 0.01
"""A listed focal length further than this from fx is another camera (or resized frames)."""
SPLIT = "train"


def _frame(scene: str, number: str, rgb: str, depth: str) -> FrameRef:
    return FrameRef(SPLIT, f"{scene}/{number}", (rgb, depth), payload=scene)


def scene_of(ref: FrameRef) -> str:
    return str(ref.payload)


class NyuSyncConverter(Converter):
    name = "nyu-sync"
    description = ("NYU Depth V2 synchronised export (BTS/AdaBins sync/<scene>/rgb_N.jpg + sync_depth_N.png, "
                   "uint16 mm in the RGB frame), optionally selected by a BTS-format list")
    splits = (SPLIT,)

    def __init__(self, src: str | Path, list_file: str | Path | None = None,
                 eval_scenes: evs.EvalScenes | None = None):
        self.src = Path(src)
        self.list_file = None if list_file is None else Path(list_file)
        self.eval_scenes = eval_scenes

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--list", dest="list_file", type=Path, default=None, metavar="FILE",
                           help="BTS/AdaBins list (/<scene>/rgb_N.jpg /<scene>/sync_depth_N.png FOCAL per line): "
                                "convert exactly these frames")
        evs.add_arguments(group)

    @classmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> "NyuSyncConverter":
        return cls(src, list_file=getattr(args, "list_file", None), eval_scenes=evs.from_args(args, cls.name))

    def options(self) -> dict[str, Any]:
        return {"list": None if self.list_file is None else self.list_file.name,
                "eval_scenes": evs.options(self.eval_scenes)}

    # ------------------------------------------------------------ enumerate

    def enumerate(self, splits: set[str] | None) -> Enumeration:
        if not self.src.is_dir():
            raise FileNotFoundError(f"{self.src}: NYU sync root folder not found (expected <scene>/rgb_N.jpg + "
                                    "<scene>/sync_depth_N.png)")
        unknown = sorted((splits or set()) - set(self.splits))
        if unknown:
            raise InputError(f"nyu-sync has the split {SPLIT!r} only (the export holds training captures), "
                             f"not {unknown}")
        on_disk, rejected = self._walk()
        report: dict[str, Any] = {}
        if self.list_file is not None:
            frames, list_rejected, report["list"] = self._listed(on_disk)
            rejected = list_rejected  # unlisted frames are not inputs, their problems neither
        else:
            frames = on_disk
        frames, excluded, report["eval_scenes"] = evs.exclude(self.eval_scenes, frames, scene_of)
        report["frames_per_scene"] = dict(sorted(Counter(scene_of(f) for f in frames).items()))
        return Enumeration(frames, rejected + excluded, report)

    def _walk(self) -> tuple[list[FrameRef], list[Rejection]]:
        """Every rgb/depth pair of the scene folders; a file without its partner is rejected."""
        frames, rejected = [], []
        entries, err = scan_folder(self.src)
        if err is not None:
            raise InputError(f"{self.src}: cannot list the sync root ({os_reason(err)})")
        for scene_dir in (p for p in entries if p.is_dir()):
            scene = scene_dir.name
            files, err = scan_folder(scene_dir)
            if err is not None:
                rejected.append(Rejection(scene, SPLIT, "unreadable", f"{scene}: folder cannot be listed "
                                          f"({os_reason(err)}); none of its frames is converted", scene))
                continue
            rgb = {m[1]: p.name for p in files if (m := RGB_NAME.fullmatch(p.name))}
            depth = {m[1]: p.name for p in files if (m := DEPTH_NAME.fullmatch(p.name))}
            for n in sorted(rgb.keys() | depth.keys()):
                if n in rgb and n in depth:
                    frames.append(_frame(scene, n, f"{scene}/{rgb[n]}", f"{scene}/{depth[n]}"))
                    continue
                have, lacks = (rgb[n], f"sync_depth_{n}.png") if n in rgb else (depth[n], f"rgb_{n}.jpg")
                rejected.append(Rejection(f"{scene}/{n}", SPLIT, "missing-file",
                                          f"{scene}/{lacks}: missing (its partner {scene}/{have} is there)",
                                          f"{scene}/{lacks}"))
        return frames, rejected

    def _listed(self, on_disk: list[FrameRef]) -> tuple[list[FrameRef], list[Rejection], dict[str, Any]]:
        """The frames the list names, in its order; each line is a frame or a rejection."""
        try:
            lines = self.list_file.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"{self.list_file}: cannot read the frame list ({e})") from None
        present = {f.files for f in on_disk}
        frames, rejected, seen = [], [], set()
        where = self.list_file.name
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            out = _parse_line(line, f"{where}:{lineno}")
            if isinstance(out, Rejection):
                rejected.append(out)
                continue
            ref, focal = out
            if ref.frame_id in seen:
                rejected.append(Rejection(ref.frame_id, SPLIT, "duplicate", f"{where}:{lineno}: {ref.files[0]} is "
                                          "listed again; converted once", ref.files[0]))
                continue
            seen.add(ref.frame_id)
            if abs(focal - RGB_CAMERA.fx) > FOCAL_TOLERANCE_PX:
                rejected.append(Rejection(ref.frame_id, SPLIT, "bad-focal", f"{where}:{lineno}: focal {focal:g} px, "
                                          f"but the NYU RGB camera's fx is {RGB_CAMERA.fx:g}: a list for another "
                                          "camera or resized frames", ref.files[0]))
                continue
            if ref.files not in present:
                missing = [p for p in ref.files if not (self.src / p).is_file()]
                if missing:
                    rejected.append(Rejection(ref.frame_id, SPLIT, "missing-file", f"{where}:{lineno}: {missing[0]} "
                                              f"is listed but not under {self.src}", missing[0]))
                    continue
            frames.append(ref)
        if not frames and not rejected:
            raise InputError(f"{self.list_file}: the list names no frame")
        if not frames and all(r.code == "bad-list-line" for r in rejected):
            raise InputError(f"{rejected[0].reason}; no line of {self.list_file} is in the BTS list format")
        listed = {f.files for f in frames}
        report = {"file": str(self.list_file), "lines": sum(1 for ln in lines if ln.strip()),
                  "on_disk_not_listed": sum(1 for f in on_disk if f.files not in listed)}
        return frames, rejected, report

    # ------------------------------------------------------------ load

    def load(self, ref: FrameRef) -> Sample:
        rgb_rel, depth_rel = ref.files
        bgr = read_image(self.src / rgb_rel, cv2.IMREAD_COLOR, rgb_rel)
        depth = read_image(self.src / depth_rel, cv2.IMREAD_UNCHANGED, depth_rel)
        if depth.dtype != np.uint16 or depth.ndim != 2:
            raise RejectFrame("bad-dtype", f"{depth_rel}: {depth.dtype} with shape {depth.shape}, expected a "
                              "single-channel 16-bit PNG of millimetres", depth_rel)
        for rel, shape in ((rgb_rel, bgr.shape[:2]), (depth_rel, depth.shape)):
            if shape != (HEIGHT, WIDTH):
                raise RejectFrame("bad-shape", f"{rel}: {shape[1]}x{shape[0]}, the NYU sync export is {WIDTH}x{HEIGHT} "
                                  "(a cropped or resized copy would need other intrinsics)", rel)
        if not depth.any():
            raise RejectFrame("no-valid-depth", f"{depth_rel}: no valid depth pixel (all 0)", depth_rel)
        return Sample(
            key=make_key(self.name, ref.split, ref.frame_id),
            rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
            depth_mm=depth,
            intrinsics=RGB_CAMERA.intrinsics(),
            meta={"source": "nyu_depth_v2_sync", "source_files": list(ref.files), "scene": scene_of(ref),
                  "sensor": "Microsoft Kinect v1", "depth_source": "raw capture projected to RGB (NYU toolbox)"},
            depth_range_m=(0.0, MAX_DEPTH_M),
        )


def _parse_line(line: str, where: str) -> tuple[FrameRef, float] | Rejection:
    """One list line -> (frame, focal) or the rejection naming ``where`` (file:line)."""
    fields = line.split()
    if len(fields) < 3:
        return Rejection(where, SPLIT, "bad-list-line", f"{where}: {len(fields)} field(s), expected "
                         "'/<scene>/rgb_N.jpg /<scene>/sync_depth_N.png FOCAL'")
    rgb, depth, focal_text = fields[:3]
    try:
        focal = float(focal_text)
    except ValueError:
        focal = math.nan
    paths = [p.strip("/").split("/") for p in (rgb, depth)]
    rgb_m = RGB_NAME.fullmatch(paths[0][-1]) if len(paths[0]) == 2 else None
    depth_m = DEPTH_NAME.fullmatch(paths[1][-1]) if len(paths[1]) == 2 else None
    problem = ("the focal length is not a number" if not math.isfinite(focal) else
               "paths must be /<scene>/rgb_N.jpg and /<scene>/sync_depth_N.png" if not (rgb_m and depth_m) else
               "RGB and depth are in different scene folders" if paths[0][0] != paths[1][0] else
               "RGB and depth numbers differ" if rgb_m[1] != depth_m[1] else
               "a scene folder name must be [A-Za-z0-9_-]" if not re.fullmatch(r"[A-Za-z0-9_\-]+", paths[0][0])
               else None)
    if problem:
        return Rejection(where, SPLIT, "bad-list-line", f"{where}: {problem} (got {line.strip()!r})")
    scene = paths[0][0]
    return _frame(scene, rgb_m[1], "/".join(paths[0]), "/".join(paths[1])), focal
