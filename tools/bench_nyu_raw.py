"""Per-frame cost of the nyu-raw converter against its floor, one process, one OpenCV thread.

    python tools/bench_nyu_raw.py [--frames 16] [--rounds 5] [--photos ../shared/samples/nyu]

Floor: read the depth PGM and the RGB PPM (the converter's own readers) and encode the output
sample as the shard writer does (JPEG 95 + zstd depth + JSON). Conversion: ``load`` (sync lookup,
byte swap, noise mask, disparity -> metres, RGB undistortion, projection, z-buffer) + the same
encoding. Both are timed on the same frames, interleaved, as CPU time of the one thread doing the
work (per frame per core; waiting for a core on a shared machine does not count), and printed side
by side: the median of all timings and the median over frames of each frame's best round.

Frames: a scene folder in the dumps' true layout, built from the real NYU frames in --photos
(rgb_*.jpg as the PPM; sync_depth_*.png turned into disparities by the inverse model, holes as
no return) when present, else rendered by the fixture (vortex_data.fixtures.nyu_raw).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from vortex_data.convert.image_files import read_image
from vortex_data.convert.nyu.camera import NO_RETURN, metres_to_disparity
from vortex_data.convert.nyu.raw import RGB_FLAGS, NyuRawConverter, read_raw_depth
from vortex_data.fixtures.nyu_raw import T0_US, dump_name, kinect_pgm, kinect_ppm, write_raw_scene
from vortex_data.format.schema import encode_sample

cv2.setNumThreads(1)


def photo_scene(folder: Path, photos: Path, n: int) -> bool:
    """n frames of a scene folder from the real photos (each shifted a pixel more); False if none."""
    pairs = [(p, p.with_name(p.name.replace("rgb_", "sync_depth_").replace(".jpg", ".png")))
             for p in sorted(photos.glob("rgb_*.jpg"))]
    pairs = [(r, d) for r, d in pairs if d.is_file()]
    if not pairs:
        return False
    folder.mkdir(parents=True)
    for i in range(n):
        rgb_p, depth_p = pairs[i % len(pairs)]
        rgb = np.roll(cv2.cvtColor(cv2.imread(str(rgb_p)), cv2.COLOR_BGR2RGB), i, axis=1)
        mm = np.roll(cv2.imread(str(depth_p), cv2.IMREAD_UNCHANGED), i, axis=1).astype(np.float64)
        raw = np.where(mm > 0, np.rint(metres_to_disparity(np.where(mm > 0, mm / 1000, 1.0))), NO_RETURN)
        t = T0_US + i * 33_333
        (folder / dump_name("d", t, i)).write_bytes(kinect_pgm(np.clip(raw, 0, NO_RETURN).astype(np.uint16)))
        (folder / dump_name("r", t + 2000, i)).write_bytes(kinect_ppm(rgb))
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5, help="timed passes over the frames")
    ap.add_argument("--photos", type=Path, default=Path("../shared/samples/nyu"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "bench_room_0001"
        real = photo_scene(scene, args.photos, args.frames)
        if not real:
            write_raw_scene(scene, n_frames=args.frames, missing_rgb=None, late_rgb=None)
        conv = NyuRawConverter(Path(tmp))
        refs = conv.enumerate(None).frames
        root = conv.source_root()
        samples = [conv.load(r) for r in refs]  # warm-up: caches (rays, maps) and the floor's output samples
        # CPU time of this thread (the work runs on it: one OpenCV thread, zstd single-threaded):
        # per frame per core, and not inflated by time spent waiting for a core on a busy machine.
        clock = time.thread_time
        floor = np.zeros((args.rounds, len(refs)))
        full = np.zeros((args.rounds, len(refs)))
        for k in range(args.rounds):
            for i, (ref, sample) in enumerate(zip(refs, samples)):
                t0 = clock()
                read_raw_depth(root / ref.files[0], ref.files[0])
                read_image(root / ref.files[1], RGB_FLAGS, ref.files[1])
                encode_sample(sample)
                t1 = clock()
                encode_sample(conv.load(ref))
                t2 = clock()
                floor[k, i], full[k, i] = t1 - t0, t2 - t1
        what = f"real NYU photos from {args.photos}" if real else "fixture renders"
        print(f"{len(refs)} frames 640x480 ({what}), {args.rounds} rounds, one process, CPU ms/frame:")
        print(f"{'':40s} {'median':>8s} {'median of per-frame best':>26s}")
        for name, t in (("floor (read PGM + PPM, encode sample)", floor), ("nyu-raw (load + encode sample)", full)):
            print(f"{name:40s} {np.median(t) * 1e3:8.2f} {np.median(t.min(axis=0)) * 1e3:26.2f}")
        print(f"ratio: {np.median(full) / np.median(floor):.2f}x the floor (medians), "
              f"{np.median(full.min(axis=0)) / np.median(floor.min(axis=0)):.2f}x (per-frame best)")


if __name__ == "__main__":
    main()
