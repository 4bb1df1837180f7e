"""NYU Depth V2 raw captures (the Kinect dumps, ~407k frames in 464 scene folders) -> Samples.

Layout (libfreenect's ``fakenect`` recorder, which NYU used): ``<scene>/d-<sec>.<usec>-<n>.pgm``
(depth: "P5 640 480 65535" then 11-bit disparities as 16-bit words in the recording PC's
little-endian order, i.e. byte-swapped against the PGM standard), ``r-<sec>.<usec>-<n>.ppm``
(RGB, P6 8-bit), optional ``a-<sec>.<usec>-<n>.dump`` (libfreenect's 12-byte
``freenect_raw_tilt_state``: accelerometer x, y, z as int16, tilt angle as int8) and ``INDEX.txt``
(every file in recording order). ``<sec>.<usec>`` is the host clock, ``<n>`` the Kinect's.

What the official toolbox does, per frame, and how it is done here (docs/nyu.md, raw captures):

1. ``get_synched_frames.m``: depth is the primary stream; each depth frame takes the RGB (and
   accelerometer) file nearest in host time. Unlike the toolbox, a pair further apart than
   ``--max-dt`` is rejected with its distance, and ``--every N`` keeps every N-th synchronised
   frame of a scene.
2. ``swapbytes(imread(pgm))``: read the PGM, swap the bytes of each word; a value above 2047 means
   the file is not in the dumps' byte order, and the frame is rejected saying so.
3. ``project_depth_map.m``: undistort the RGB with its calibration (precomputed maps); mask no
   return (2047) grown by one pixel, as the toolbox's bilinear undistortion of its noise mask
   grows it, and disparities below 600; metres = 351.3 / (1092.5 - raw), capped at 10 m; then
   back-project through the depth lens (its undistorted rays, precomputed), move by R, t into the
   RGB camera, project with the RGB intrinsics and keep the nearest depth per pixel; pixels
   nothing reaches are 0. Depth is the RGB camera's z in millimetres (the toolbox writes the depth
   camera's z at the RGB pixel; they differ by under 0.5 %).

The sample's intrinsics are the undistorted RGB camera's (the labelled set's, ``camera.py``).
"""

from __future__ import annotations

import argparse
import re
import struct
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ...errors import InputError
from ...format.schema import Sample
from ...format.tar_index import make_key
from ..base import Converter, Enumeration, FrameRef, Rejection, RejectFrame, os_reason, scan_folder
from ..image_files import read_image
from ..registration import undistort_image
from ..rig_warp import DepthToColorWarp
from . import eval_scenes as evs
from .camera import (DEPTH_CAMERA, DISPARITY_PARAM_2, HEIGHT, MAX_DEPTH_M, MIN_DEPTH_M, MIN_RAW, NO_RETURN, R_DEPTH_TO_RGB,
                     RGB_CAMERA, T_DEPTH_TO_RGB, WIDTH, disparity_to_metres)

NAME = re.compile(r"^([adr])-(\d+)\.(\d+)-(\d+)\.(pgm|ppm|dump)$")
"""fakenect's ``%c-%f-%u.%s``: kind, host seconds, fraction, Kinect timestamp, extension."""
EXTENSION = {"d": "pgm", "r": "ppm", "a": "dump"}
DEFAULT_MAX_DT = 0.05
RGB_FLAGS = cv2.IMREAD_COLOR_RGB
"""How the PPM is decoded: straight to RGB order (the sample's), no BGR round trip."""
ACCEL_BYTES = 12
"""sizeof(freenect_raw_tilt_state) on the x86 PCs that recorded NYU (get_accel_data.cpp checks it)."""
_SCENE_TYPE = re.compile(r"_\d+[A-Za-z]?$")


@dataclass(frozen=True)
class RawFile:
    name: str
    time_us: int
    """Host time in microseconds (``%f`` prints six decimals)."""
    device: int


def parse_name(name: str) -> tuple[str, RawFile] | None:
    """``d-1315411562.623407-1427426385.pgm`` -> ('d', RawFile); None if not a dump file name."""
    m = NAME.match(name)
    if m is None or EXTENSION[m[1]] != m[5]:
        return None
    frac = m[3][:6].ljust(6, "0")
    return m[1], RawFile(name, int(m[2]) * 1_000_000 + int(frac), int(m[4]))


def nearest(times: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query time the index of the nearest of the sorted ``times`` and the distance; on a
    tie the later one, as get_synched_frames.m (it advances while the distance does not grow)."""
    right = np.clip(np.searchsorted(times, queries, side="left"), 0, len(times) - 1)
    left = np.clip(right - 1, 0, len(times) - 1)
    d_right, d_left = np.abs(times[right] - queries), np.abs(times[left] - queries)
    idx = np.where(d_left < d_right, left, right)
    return idx, np.minimum(d_left, d_right)


def scene_type(scene: str) -> str:
    """get_scene_type_from_scene.m: ``living_room_0002k`` -> ``living_room``."""
    return _SCENE_TYPE.sub("", scene)


def read_raw_depth(path: Path, rel: str) -> np.ndarray:
    """A dump's depth PGM as the Kinect's 11-bit disparities (480, 640) uint16 (swapbytes(imread))."""
    img = read_image(path, cv2.IMREAD_UNCHANGED, rel)
    if img.dtype != np.uint16 or img.shape != (HEIGHT, WIDTH):
        raise RejectFrame("bad-shape", f"{rel}: depth is {img.shape} {img.dtype}, expected a 16-bit {WIDTH}x{HEIGHT} "
                          "PGM (P5 ... 65535) as the Kinect dumps are", rel)
    raw = img.byteswap()
    top = int(raw.max())
    if top > NO_RETURN:
        raise RejectFrame("bad-value", f"{rel}: disparities up to {top} exceed the Kinect's 11-bit range (0..2047): "
                          "the 16-bit words are not byte-swapped as in the NYU dumps (a re-saved file?); "
                          "convert the original dump", rel)
    return raw


def read_accel(path: Path, rel: str) -> tuple[list[float] | None, str | None]:
    """``[x, y, z, tilt]`` of a ``.dump`` (get_accel_data.m), or None and why it was not used."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return None, f"{rel}: {os_reason(e)}"
    if len(data) != ACCEL_BYTES:
        return None, f"{rel}: {len(data)} bytes, expected {ACCEL_BYTES} (freenect_raw_tilt_state)"
    return [float(v) for v in struct.unpack_from("<hhhb", data)], None


FIRST_CAPPED_RAW = int(np.argmax(disparity_to_metres(np.arange(int(DISPARITY_PARAM_2) + 1)) > MAX_DEPTH_M))
"""The first disparity whose depth exceeds MAX_DEPTH_M (and is capped to it)."""
LAST_VALID_RAW = int(np.ceil(DISPARITY_PARAM_2)) - 1
"""1092: from 1092.5 on the model's depth is infinite or negative."""
_GROW = np.ones((3, 3), np.uint8)


def raw_to_metres(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Disparities (H, W) -> (depth-camera metres float32, valid mask uint8 0/255) with the
    toolbox's rules: disparities MIN_RAW..1092 are valid, no return (2047) grown by one pixel is
    not. Metres are computed everywhere (the mask says which count) and not yet capped: the
    projection clips them to its depth range, whose far end is MAX_DEPTH_M (``_warper``)."""
    valid = cv2.inRange(raw, MIN_RAW, LAST_VALID_RAW)
    no_return = cv2.inRange(raw, NO_RETURN, NO_RETURN)
    if cv2.countNonZero(no_return):
        cv2.subtract(valid, cv2.dilate(no_return, _GROW), dst=valid)
    return disparity_to_metres(raw), valid


class NyuRawConverter(Converter):
    name = "nyu-raw"
    description = ("NYU Depth V2 raw Kinect captures (<scene>/d-*.pgm, r-*.ppm, a-*.dump, INDEX.txt): synchronised "
                   "and projected into the RGB camera as the official toolbox does")
    splits = ("train",)

    def __init__(self, src: str | Path, max_dt: float = DEFAULT_MAX_DT, every: int = 1,
                 eval_scenes: evs.EvalScenes | None = None):
        if not max_dt > 0:
            raise InputError(f"--max-dt must be positive seconds, got {max_dt}")
        if every < 1:
            raise InputError(f"--every must be 1 or more, got {every}")
        self.src = Path(src)
        self.max_dt = float(max_dt)
        self.every = int(every)
        self.eval_scenes = eval_scenes
        self._warp: DepthToColorWarp | None = None
        self._root: Path | None = None

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--max-dt", type=float, default=DEFAULT_MAX_DT, metavar="SECONDS",
                           help="nyu-raw: reject a depth frame whose nearest RGB frame is further apart in time "
                                "(default 0.05: 1.5 frame periods at 30 Hz, so one dropped RGB frame is bridged and "
                                "a longer gap is not; see docs/nyu.md)")
        group.add_argument("--every", type=int, default=1, metavar="N",
                           help="nyu-raw: keep every N-th synchronised frame of each scene (default 1: all)")
        evs.add_arguments(group)

    @classmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> "NyuRawConverter":
        return cls(src, max_dt=getattr(args, "max_dt", DEFAULT_MAX_DT), every=getattr(args, "every", 1),
                   eval_scenes=evs.from_args(args, cls.name))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_warp"] = None  # rebuilt per process: cheaper than pickling its arrays
        return state

    def options(self) -> dict[str, Any]:
        return {"max_dt_s": self.max_dt, "every": self.every, "depth": "projected to the undistorted RGB camera",
                "max_depth_m": MAX_DEPTH_M, "eval_scenes": evs.options(self.eval_scenes)}

    # ------------------------------------------------------------ enumerate

    def _scene_dirs(self) -> tuple[Path, list[Path]]:
        """(root the frame paths are relative to, scene folders); --src is the folder of scene
        folders or one scene folder."""
        if not self.src.is_dir():
            raise InputError(f"{self.src}: not a folder; --src is the folder holding the NYU raw scene folders "
                             "(<scene>/d-*.pgm, r-*.ppm, INDEX.txt)")
        entries, err = scan_folder(self.src)
        if err is not None:
            raise InputError(f"{self.src}: cannot be listed ({os_reason(err)})")
        if any(parse_name(p.name) for p in entries):  # --src is one scene folder
            return self.src.parent, [self.src]
        scenes = [p for p in entries if p.is_dir()]
        if not scenes:
            raise InputError(f"{self.src}: no scene folders (<scene>/d-*.pgm, r-*.ppm) found; is this the NYU raw root?")
        return self.src, scenes

    def enumerate(self, splits: set[str] | None) -> Enumeration:
        unknown = sorted(set(splits or ()) - set(self.splits))
        if unknown:
            raise InputError(f"nyu-raw has one split, train (scenes are excluded or kept whole), not {unknown}")
        root, scenes = self._scene_dirs()
        rejected: list[Rejection] = []
        self._root = root
        with ThreadPoolExecutor(max_workers=min(16, len(scenes))) as pool:  # listing is I/O: threads overlap it
            results = list(pool.map(lambda d: self._scene(root, d), scenes))
        frames: list[FrameRef] = []
        counts: Counter[str] = Counter()
        per_scene, index_report, dts = {}, {}, []
        for scene_dir, (f, r, c, idx, dt) in zip(scenes, results):
            frames += f
            rejected += r
            counts.update(c)
            per_scene[scene_dir.name] = len(f)
            if idx:
                index_report[scene_dir.name] = idx
            dts.append(dt)
        dt_all = np.concatenate(dts) if dts else np.zeros(0)
        kept = len(frames)
        # Evaluation rooms are left out as the sync export's are (one rule, eval_scenes.py).
        frames, excluded, eval_report = evs.exclude(self.eval_scenes, frames, lambda f: f.payload["scene"])
        rejected += excluded
        report = {
            "scenes": len(scenes),
            # depth_frames = synchronised + rejected frames; synchronised = kept + thinned_by_every;
            # kept = written + eval_scenes.excluded.
            "depth_frames": counts["depth"], "synchronised": counts["synchronised"], "kept": kept,
            "thinned_by_every": counts["synchronised"] - kept, "eval_scenes": eval_report,
            "rejected_frames": counts["depth"] - counts["synchronised"],
            "rgb_frames": counts["rgb"], "rgb_frames_used": counts["rgb_used"], "accel_files": counts["accel"],
            "files_with_other_names": counts["other"],
            "sync_dt_ms": ({"median": round(float(np.median(dt_all)) / 1000, 3),
                            "p95": round(float(np.percentile(dt_all, 95)) / 1000, 3),
                            "max": round(float(dt_all.max()) / 1000, 3)} if len(dt_all) else None),
            "index_mismatches": index_report,
            "frames_per_scene": per_scene,
        }
        return Enumeration(frames, rejected, report)

    def _scene(self, root: Path, scene_dir: Path):
        """One scene: its frames, rejections, counts, INDEX.txt comparison and kept pairs' time gaps (us)."""
        scene = scene_dir.name
        rel = scene_dir.relative_to(root).as_posix()
        counts: Counter[str] = Counter()
        entries, err = scan_folder(scene_dir)
        if err is not None:
            return [], [Rejection(rel, "train", "unreadable", f"{rel}: folder cannot be listed ({os_reason(err)}); "
                                  "none of its frames is converted", rel)], counts, {}, np.zeros(0)
        by_kind: dict[str, list[RawFile]] = {"d": [], "r": [], "a": []}
        bad_depth_names, dump_names = [], set()
        for p in entries:
            parsed = parse_name(p.name)
            if parsed is not None:
                by_kind[parsed[0]].append(parsed[1])
                dump_names.add(p.name)
            elif p.name.startswith("d-"):
                bad_depth_names.append(p.name)
            elif p.name != "INDEX.txt":
                counts["other"] += 1
        depth, rgb, accel = (sorted(by_kind[k], key=lambda f: (f.time_us, f.name)) for k in "dra")
        counts.update(depth=len(depth) + len(bad_depth_names), rgb=len(rgb), accel=len(accel))
        rejected = [Rejection(f"{scene}/{n}", "train", "bad-name",
                              f"{rel}/{n}: not a fakenect depth name d-<sec>.<usec>-<timestamp>.pgm", f"{rel}/{n}")
                    for n in bad_depth_names]
        index = _compare_index(scene_dir, dump_names)
        if not depth:
            return [], rejected, counts, index, np.zeros(0)
        if not rgb:
            rejected += [Rejection(_frame_id(scene, d), "train", "no-rgb",
                                   f"{rel}/{d.name}: the scene has no RGB frame (r-*.ppm)", f"{rel}/{d.name}")
                         for d in depth]
            return [], rejected, counts, index, np.zeros(0)
        d_t = np.array([d.time_us for d in depth], np.int64)
        r_i, r_dt = nearest(np.array([r.time_us for r in rgb], np.int64), d_t)
        a_i, a_dt = (nearest(np.array([a.time_us for a in accel], np.int64), d_t) if accel
                     else (np.zeros(len(depth), np.int64), np.full(len(depth), np.iinfo(np.int64).max)))
        max_dt_us = self.max_dt * 1e6
        frames, kept_dt, synced, used = [], [], 0, set()
        for k, d in enumerate(depth):
            r = rgb[r_i[k]]
            if r_dt[k] > max_dt_us:
                rejected.append(Rejection(
                    _frame_id(scene, d), "train", "unsynchronised",
                    f"{rel}/{d.name}: the nearest RGB frame {r.name} is {r_dt[k] / 1000:.1f} ms away, more than "
                    f"--max-dt {self.max_dt:g} s", f"{rel}/{d.name}"))
                continue
            synced += 1
            if (synced - 1) % self.every:
                continue
            used.add(r.name)
            a = accel[a_i[k]].name if a_dt[k] <= max_dt_us else None
            files = (f"{rel}/{d.name}", f"{rel}/{r.name}") + ((f"{rel}/{a}",) if a else ())
            frames.append(FrameRef("train", _frame_id(scene, d), files,
                                   payload={"scene": scene, "dt_s": float(r_dt[k]) / 1e6, "time_us": d.time_us,
                                            "device_timestamp": d.device}))
            kept_dt.append(r_dt[k])
        counts.update(synchronised=synced, rgb_used=len(used))
        return frames, rejected, counts, index, np.asarray(kept_dt, np.int64)

    # ------------------------------------------------------------ load

    def _warper(self) -> DepthToColorWarp:
        if self._warp is None:
            # Depths are clipped to what a valid disparity gives, capped at MAX_DEPTH_M as the toolbox does.
            self._warp = DepthToColorWarp(DEPTH_CAMERA, RGB_CAMERA, R_DEPTH_TO_RGB, T_DEPTH_TO_RGB,
                                          z_range=(MIN_DEPTH_M, MAX_DEPTH_M))
        return self._warp

    def source_root(self) -> Path:
        if self._root is None:  # enumerate sets it; a converter used for load() alone looks once
            self._root = self._scene_dirs()[0]
        return self._root

    def load(self, ref: FrameRef) -> Sample:
        root = self.source_root()
        depth_rel, rgb_rel = ref.files[:2]
        raw = read_raw_depth(root / depth_rel, depth_rel)
        rgb = read_image(root / rgb_rel, RGB_FLAGS, rgb_rel)
        if rgb.shape != (HEIGHT, WIDTH, 3):
            raise RejectFrame("bad-shape", f"{rgb_rel}: RGB is {rgb.shape[1]}x{rgb.shape[0]}, expected {WIDTH}x{HEIGHT}",
                              rgb_rel)
        rgb = undistort_image(rgb, RGB_CAMERA)
        # project_depth_map.m caps the projected depth at maxDepth too
        depth = self._warper().from_metres(*raw_to_metres(raw), max_mm=round(MAX_DEPTH_M * 1000))
        if not cv2.countNonZero(depth):
            raise RejectFrame("no-valid-depth", f"{depth_rel}: no depth pixel survives the noise mask and projection",
                              depth_rel)
        p = ref.payload
        meta: dict[str, Any] = {
            "source": "nyu_depth_v2_raw", "scene": p["scene"], "scene_type": scene_type(p["scene"]),
            "raw_depth_filename": depth_rel, "raw_rgb_filename": rgb_rel, "sync_dt_s": round(p["dt_s"], 6),
            "time_s": p["time_us"] / 1e6, "device_timestamp": p["device_timestamp"],
            "depth_capped_at_10m": cv2.countNonZero(cv2.inRange(raw, FIRST_CAPPED_RAW, LAST_VALID_RAW)),
        }
        if len(ref.files) > 2:
            accel, why = read_accel(root / ref.files[2], ref.files[2])
            meta.update({"accel": accel, "accel_filename": ref.files[2]} if accel else {"accel_unread": why})
        return Sample(key=make_key(self.name, ref.split, ref.frame_id), rgb=rgb, depth_mm=depth,
                      intrinsics=RGB_CAMERA.intrinsics(), meta=meta, depth_range_m=(MIN_DEPTH_M, MAX_DEPTH_M))


def _frame_id(scene: str, depth: RawFile) -> str:
    return f"{scene}/{Path(depth.name).stem}"


def _compare_index(scene_dir: Path, on_disk: set[str]) -> dict[str, Any]:
    """INDEX.txt against the folder: what it lists that is missing, and dump files it does not list
    (empty when they agree). The folder, not the index, decides what is converted, as in the toolbox."""
    index = scene_dir / "INDEX.txt"
    try:
        listed = {line.strip() for line in index.read_text(errors="replace").splitlines() if line.strip()}
    except FileNotFoundError:
        return {"index": "missing"}
    except OSError as e:
        return {"index": f"unreadable ({os_reason(e)})"}
    missing, unlisted = sorted(listed - on_disk), sorted(on_disk - listed)
    out: dict[str, Any] = {}
    if missing:
        out.update(listed_missing=len(missing), listed_missing_examples=missing[:5])
    if unlisted:
        out.update(not_listed=len(unlisted), not_listed_examples=unlisted[:5])
    return out
