"""The one resize policy: depth stays where RGB and the intrinsics put it, through every resize path.

Ramp images carry their own source coordinate: depth = 1000 + 4 x mm (or 1000 + 4 y), so each
output depth value says which source column (row) it came from, and the output intrinsics say
which one it should have come from: x = cx + (u - cx') fx / fx'. The mean of the difference is
the shift between depth and RGB/intrinsics (OpenCV's INTER_NEAREST gave -0.80 px in x through the
training loader at 240x320, and INTER_NEAREST_EXACT +0.5 px at an exact 2x).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from vortex_data.stream.augment import AugmentConfig
from vortex_data.format.geometry import (nearest_indices, resize_intrinsics, resize_nearest, resize_rgb,
                                         rgb_interpolation)
from vortex_data.convert.registration import CameraModel
from vortex_data.format.schema import EncodeOptions, Sample
from vortex_data.format.geometry import Intrinsics
from vortex_data.convert.shards import BuildConfig, build_shards
from vortex_data.convert.base import Converter, Enumeration, FrameRef
from vortex_data.convert.femto import FemtoConverter
from vortex_data.convert.femto.calib import FemtoCalibration
from vortex_data.convert.femto.recording import CaptureData
from vortex_data.stream import make_loader

H, W = 480, 640
K = Intrinsics(fx=518.9, fy=519.5, cx=325.6, cy=253.7)  # off-centre, as NYU's
MAX_SHIFT = 0.05


def ramp(axis: str, h: int = H, w: int = W) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (1000 + 4 * (xx if axis == "x" else yy)).astype(np.uint16)


def ramp_rgb(h: int = H, w: int = W) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), np.full_like(xx, 128)], -1).astype(np.uint8)


def shift(depth_mm: np.ndarray, k_out: Intrinsics | np.ndarray, axis: str, k_src: Intrinsics = K,
          flipped: bool = False) -> tuple[float, np.ndarray]:
    """Mean (source coordinate read from the ramp - coordinate the intrinsics give), and the
    source coordinates read, over valid pixels."""
    if not isinstance(k_out, Intrinsics):
        k_out = Intrinsics(*(float(v) for v in k_out))
    h, w = depth_mm.shape
    valid = depth_mm > 0
    read = (depth_mm.astype(np.float64) - 1000) / 4
    if axis == "x":
        u = np.broadcast_to(np.arange(w)[None, :], (h, w))
        sign = -1.0 if flipped else 1.0
        expected = k_src.cx + sign * (u - k_out.cx) * k_src.fx / k_out.fx
    else:
        v = np.broadcast_to(np.arange(h)[:, None], (h, w))
        expected = k_src.cy + (v - k_out.cy) * k_src.fy / k_out.fy
    return float((read - expected)[valid].mean()), read[valid]


def assert_measured(read: np.ndarray, axis: str) -> None:
    """Every output depth is an input depth: a whole source pixel inside the image."""
    n = W if axis == "x" else H
    assert np.all(read == np.round(read)) and read.min() >= 0 and read.max() <= n - 1


# ---------------------------------------------------------------- the functions themselves

@pytest.mark.parametrize("n_src,n_dst", [(640, 320), (480, 240), (640, 240), (640, 213), (480, 1000), (7, 3)])
def test_nearest_indices_are_centre_aligned(n_src, n_dst):
    idx = nearest_indices(n_src, n_dst)
    x = (np.arange(n_dst) + 0.5) * n_src / n_dst - 0.5
    assert np.abs(idx - x).max() <= 0.5 + 1e-9                     # always a nearest pixel
    assert abs((idx - x).mean()) <= 0.01                           # and no systematic shift
    assert idx.min() >= 0 and idx.max() <= n_src - 1


def test_opencv_nearest_modes_are_shifted():
    """Why the package does not use either of OpenCV's nearest modes for depth."""
    d = ramp("x")
    x = (np.arange(320) + 0.5) * 2 - 0.5
    near = (cv2.resize(d, (320, 240), interpolation=cv2.INTER_NEAREST)[0] - 1000) / 4
    exact = (cv2.resize(d, (320, 240), interpolation=cv2.INTER_NEAREST_EXACT)[0] - 1000) / 4
    assert (near - x).mean() == pytest.approx(-0.5)
    assert (exact - x).mean() == pytest.approx(0.5)
    assert (resize_nearest(d, (240, 320))[0] - 1000) / 4 - x == pytest.approx(np.zeros(320), abs=0.5)


def test_rgb_interpolation_rule():
    assert rgb_interpolation((480, 640), (240, 320)) == cv2.INTER_AREA
    assert rgb_interpolation((480, 640), (240, 700)) == cv2.INTER_LINEAR   # one axis grows
    assert rgb_interpolation((240, 320), (480, 640)) == cv2.INTER_LINEAR


def test_dst_buffers_are_written_and_checked():
    d, rgb = ramp("x"), ramp_rgb()
    dd = np.empty((240, 320), np.uint16)
    assert resize_nearest(d, (240, 320), dst=dd) is dd and dd[0, 1] == d[0, 3]
    rd = np.empty((240, 320, 3), np.uint8)
    assert resize_rgb(rgb, (240, 320), dst=rd) is rd
    assert np.array_equal(rd, resize_rgb(rgb, (240, 320)))
    same = np.empty_like(d)
    assert resize_nearest(d, (H, W), dst=same) is same and np.array_equal(same, d)
    with pytest.raises(ValueError):
        resize_rgb(rgb, (240, 320), dst=np.empty((240, 321, 3), np.uint8))


@pytest.mark.parametrize("axis", ["x", "y"])
@pytest.mark.parametrize("out_hw", [(240, 320), (160, 213), (360, 480), (600, 800)])
def test_resize_nearest_follows_the_intrinsics(axis, out_hw):
    out = resize_nearest(ramp(axis), out_hw)
    s, read = shift(out, resize_intrinsics(K, (H, W), out_hw), axis)
    assert abs(s) <= MAX_SHIFT
    assert_measured(read, axis)


# ---------------------------------------------------------------- converter --resize

class RampConverter(Converter):
    name = "ramp"
    description = "depth ramps for the resize tests"
    splits = ("train",)

    def __init__(self, axis: str, n: int = 2, src: Path = Path(".")):
        self.axis, self.n, self.src = axis, n, src

    @classmethod
    def from_args(cls, src: Path, args: argparse.Namespace) -> "RampConverter":
        raise NotImplementedError

    def options(self) -> dict[str, Any]:
        return {"axis": self.axis, "n": self.n}

    def enumerate(self, splits: set[str] | None) -> Enumeration:
        return Enumeration([FrameRef("train", f"{self.axis}_{i:03d}", (), i) for i in range(self.n)])

    def load(self, ref: FrameRef) -> Sample:
        return Sample(key="", rgb=ramp_rgb(), depth_mm=ramp(self.axis), intrinsics=K,
                      seg=np.zeros((H, W), np.uint8), meta={})


def build_ramps(root: Path, axis: str, resize: int | None = None, n: int = 2) -> Path:
    cfg = BuildConfig(out_dir=root / "shards", manifest_dir=root / "manifests", shard_samples=4,
                      encode=EncodeOptions(array_codec="png"), resize=resize, workers=1, progress=False)
    return Path(build_shards(RampConverter(axis, n), cfg).manifests[0])


@pytest.fixture(scope="module", params=["x", "y"])
def ramps(request, tmp_path_factory):
    axis = request.param
    return axis, build_ramps(tmp_path_factory.mktemp(f"ramps_{axis}"), axis, n=6)


@pytest.mark.parametrize("short_side", [240, 200, 600])
@pytest.mark.parametrize("axis", ["x", "y"])
def test_converter_resize_keeps_depth_on_the_intrinsics(tmp_path, axis, short_side):
    manifest = build_ramps(tmp_path, axis, resize=short_side)
    oh, ow = short_side, round(W * short_side / H)
    batch = next(iter(make_loader(manifest=str(manifest), split="train", training=False, augment=False,
                                  size=(oh, ow), batch_size=2)))
    depth_mm = np.rint(batch["depth"][0, 0].numpy() * 1000).astype(np.uint16)
    assert depth_mm.shape == (oh, ow)
    s, read = shift(depth_mm, batch["intrinsics"][0].numpy().astype(np.float64), axis)
    assert abs(s) <= MAX_SHIFT, f"converter --resize {short_side}: depth shifted {s:+.3f} px in {axis}"
    assert_measured(read, axis)


# ---------------------------------------------------------------- loader transforms

def loader_batches(manifest: Path, cfg: AugmentConfig, training: bool, n_batches: int = 3):
    loader = make_loader(manifest=str(manifest), split="train", training=training, augment=cfg if training else False,
                         size=cfg.size, batch_size=2, seed=3)
    it = iter(loader)
    return [next(it) for _ in range(n_batches)]


def batch_shifts(batches, axis: str, flipped: bool = False) -> list[float]:
    shifts = []
    for b in batches:
        for i in range(len(b["key"])):
            depth_mm = np.rint(b["depth"][i, 0].numpy() * 1000).astype(np.uint16)
            s, read = shift(depth_mm, b["intrinsics"][i].numpy().astype(np.float64), axis, flipped=flipped)
            assert_measured(read, axis)
            shifts.append(s)
    return shifts


@pytest.mark.parametrize("size", [(240, 320), (480, 640)])
def test_training_transform_keeps_depth_on_the_intrinsics(ramps, size):
    axis, manifest = ramps
    cfg = AugmentConfig(size=size, flip_p=0.0)
    shifts = batch_shifts(loader_batches(manifest, cfg, training=True), axis)
    assert max(abs(s) for s in shifts) <= MAX_SHIFT, f"training loader at {size}: shifts {np.round(shifts, 3)}"


def test_training_transform_flipped(ramps):
    axis, manifest = ramps
    cfg = AugmentConfig(size=(240, 320), flip_p=1.0)
    shifts = batch_shifts(loader_batches(manifest, cfg, training=True), axis, flipped=axis == "x")
    assert max(abs(s) for s in shifts) <= MAX_SHIFT


@pytest.mark.parametrize("size", [(240, 320), (192, 256), (256, 256)])
def test_evaluation_transform_keeps_depth_on_the_intrinsics(ramps, size):
    axis, manifest = ramps
    shifts = batch_shifts(loader_batches(manifest, AugmentConfig(size=size), training=False, n_batches=1), axis)
    assert max(abs(s) for s in shifts) <= MAX_SHIFT, f"eval transform at {size}: shifts {np.round(shifts, 3)}"


# ---------------------------------------------------------------- Femto registration output

def pinhole(w: int, h: int) -> CameraModel:
    s = w / 640
    return CameraModel(w, h, 500.0 * s, 500.0 * s, (320.3 + 0.5) * s - 0.5, (287.7 + 0.5) * s - 0.5)


@pytest.mark.parametrize("register", ["color", "depth", "none"])
@pytest.mark.parametrize("axis", ["x", "y"])
def test_femto_output_keeps_depth_on_the_intrinsics(register, axis):
    """Depth and colour from one viewpoint (R = I, t = 0) and the same lens: a pixel's ray is the
    same in both cameras, so the output depth must still be the source ramp value the output
    intrinsics point at, whatever the output size."""
    depth_cam = pinhole(640, 576)
    color_cam = pinhole(1280, 1152)
    calib = FemtoCalibration(depth=depth_cam, color=color_cam, R=tuple(np.eye(3).ravel()), t=(0.0, 0.0, 0.0),
                             source="test")
    h, w = depth_cam.height, depth_cam.width
    data = CaptureData(rgb=ramp_rgb(color_cam.height, color_cam.width), depth_mm=ramp(axis, h, w))
    conv = FemtoConverter(Path("unused.mkv"), register=register, out_size=(320, 288))
    rgb, depth, camera, _ = conv._register(data, calib)
    assert depth.shape == (288, 320) and rgb.shape[:2] == (288, 320)
    s, read = shift(depth, camera.intrinsics(), axis, k_src=depth_cam.intrinsics())
    assert abs(s) <= MAX_SHIFT, f"femto --register {register}: depth shifted {s:+.3f} px in {axis}"
    n = w if axis == "x" else h
    assert np.all(read == np.round(read)) and read.min() >= 0 and read.max() <= n - 1


def test_resize_nearest_fast_path_samples_exactly_the_same_pixels():
    """OpenCV's INTER_NEAREST_EXACT is used only for size pairs where it picks nearest_indices'
    pixels; every size pair, on either path, gives the two-gather result."""
    from vortex_data.format.geometry import _opencv_agrees, nearest_indices, resize_nearest

    rng = np.random.default_rng(0)
    paths = set()
    for _ in range(400):
        h, w, oh, ow = (int(v) for v in rng.integers(1, 700, 4))
        a = rng.integers(0, 65535, (h, w), dtype=np.uint16)
        want = np.take(a.take(nearest_indices(h, oh), axis=0), nearest_indices(w, ow), axis=1)
        assert np.array_equal(resize_nearest(a, (oh, ow)), want), (h, w, oh, ow)
        paths.add(_opencv_agrees(h, oh, 0) and _opencv_agrees(w, ow, 1))
    assert paths == {True, False}
    assert not _opencv_agrees(480, 240, 0)  # an even factor: every pixel a tie, OpenCV rounds up
