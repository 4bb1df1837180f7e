"""Per-frame cost of the nyu-raw converter against its floor, one process, one OpenCV thread.

    python tools/bench_nyu_raw.py [--frames 16] [--rounds 5] [--photos ../shared/samples/nyu]

Floor: read the depth PGM and the RGB PPM (the converter's own readers) and encode the output
sample (JPEG 95 + zstd depth + JSON), measured two ways: ``encode_sample`` alone, and the shard
writer's whole per-sample work short of the tar write (encode, member checksums, index row), which
every converter's frames pay. Conversion: ``load`` (byte swap, noise mask, disparity -> metres,
RGB undistortion, projection, z-buffer) + the same encoding. Both are timed on the same frames, interleaved, as CPU time of the one thread doing the
work (per frame per core; waiting for a core on a shared machine does not count; the z-buffer's
torch scatter runs on one thread by itself), and printed side
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
from vortex_data.convert.shards import index_row
from vortex_data.format.integrity import member_checksums
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
        t = {name: np.zeros((args.rounds, len(refs))) for name in ("floor", "full", "floor_w", "full_w")}
        for k in range(args.rounds):
            for i, (ref, sample) in enumerate(zip(refs, samples)):
                for writer, suffix in ((encode_sample, ""), (writer_path, "_w")):
                    t0 = clock()
                    read_raw_depth(root / ref.files[0], ref.files[0])
                    read_image(root / ref.files[1], RGB_FLAGS, ref.files[1])
                    writer(sample)
                    t1 = clock()
                    writer(conv.load(ref))
                    t2 = clock()
                    t["floor" + suffix][k, i], t["full" + suffix][k, i] = t1 - t0, t2 - t1
        what = f"real NYU photos from {args.photos}" if real else "fixture renders"
        print(f"{len(refs)} frames 640x480 ({what}), {args.rounds} rounds, one process, CPU ms/frame:")
        print(f"{'':58s} {'median':>8s} {'median of per-frame best':>26s}")
        rows = (("floor: read PGM + PPM, encode_sample", "floor"), ("nyu-raw: load, encode_sample", "full"),
                ("floor: read PGM + PPM, the writer's per-sample work", "floor_w"),
                ("nyu-raw: load, the writer's per-sample work", "full_w"))
        for name, key in rows:
            print(f"{name:58s} {np.median(t[key]) * 1e3:8.2f} {np.median(t[key].min(axis=0)) * 1e3:26.2f}")
        for what, f, c in (("encode_sample", "floor", "full"), ("writer's per-sample work", "floor_w", "full_w")):
            print(f"ratio with {what}: {np.median(t[c]) / np.median(t[f]):.2f}x the floor (medians), "
                  f"{np.median(t[c].min(axis=0)) / np.median(t[f].min(axis=0)):.2f}x (per-frame best)")


def writer_path(sample) -> None:
    """What the shard writer does with every converter's sample, short of writing the tar:
    encode it, hash its members and compute its index row (shards.write_group)."""
    members = encode_sample(sample)
    member_checksums(members)
    index_row(sample.key, "bench.tar", sample)


if __name__ == "__main__":
    main()
