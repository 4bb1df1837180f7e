"""AugmentConfig.scale_depth on a fronto-parallel plane of known depth.

The plane is 2 m from the camera and carries a bright board 0.4 m wide, so an image shows the
board ``fx * 0.4 / Z`` pixels wide. Whatever a crop-and-resize does, the output depth and output
focal length must still tell that story: ``"none"`` keeps Z and scales the focal length,
``"camera"`` (Metric3D's RandomResize rule) keeps the focal length of the whole image at the
training size and divides Z by the zoom, as if the camera had moved nearer.
"""

from __future__ import annotations

import numpy as np
import pytest

from vortex_data.stream.augment import AugmentConfig, augment_eval, augment_train
from vortex_data.format.geometry import Intrinsics

H, W = 240, 320
K = Intrinsics(fx=300.0, fy=300.0, cx=159.5, cy=119.5)
Z_MM = 2000
BOARD_M = 0.4


def plane_sample(key: str = "plane/train/0") -> dict:
    x_m = (np.arange(W) - K.cx) / K.fx * (Z_MM / 1000)       # metric X of each column on the plane
    board = np.abs(x_m) <= BOARD_M / 2
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, board] = 255
    return {"key": key, "rgb": rgb, "depth_mm": np.full((H, W), Z_MM, np.uint16),
            "seg": np.zeros((H, W), np.uint8), "intrinsics": K}


def board_width_px(out: dict) -> int:
    row = out["rgb"][out["rgb"].shape[0] // 2, :, 0]
    return int((row >= 128).sum())


def check_consistent(out: dict) -> float:
    """The board's width measured from the output depth and focal length, in metres."""
    depth = out["depth_mm"]
    assert depth.min() == depth.max()                          # still a plane at one depth
    z_m = float(depth[0, 0]) / 1000
    return board_width_px(out) * z_m / out["intrinsics"].fx


def test_default_is_none():
    assert AugmentConfig().scale_depth == "none"
    with pytest.raises(ValueError, match="scale_depth"):
        AugmentConfig(scale_depth="metric")


@pytest.mark.parametrize("mode", ["none", "camera"])
def test_plane_keeps_its_metric_size(mode):
    cfg = AugmentConfig(size=(120, 160), scale=(0.3, 1.0), scale_depth=mode, flip_p=0.0)
    for epoch in range(8):
        out = augment_train(plane_sample(), cfg, seed=1, epoch=epoch)
        width_m = check_consistent(out)
        px = board_width_px(out)
        assert width_m == pytest.approx(BOARD_M, abs=1.5 * BOARD_M / px), (mode, epoch)


def test_camera_mode_keeps_the_focal_length_and_scales_depth_by_the_zoom():
    eval_k = augment_eval(plane_sample(), AugmentConfig(size=(120, 160)))["intrinsics"]
    none_cfg = AugmentConfig(size=(120, 160), scale=(0.3, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    cam_cfg = AugmentConfig(size=(120, 160), scale=(0.3, 1.0), ratio=(1.0, 1.0), flip_p=0.0, scale_depth="camera")
    zooms = []
    for epoch in range(8):
        plain = augment_train(plane_sample(), none_cfg, seed=1, epoch=epoch)
        cam = augment_train(plane_sample(), cam_cfg, seed=1, epoch=epoch)
        assert np.array_equal(plain["rgb"], cam["rgb"])                      # same crop, same pixels
        assert (plain["depth_mm"] == Z_MM).all()                             # "none": depth as measured
        # How much nearer it looks: the magnification against the whole image, per axis (equal
        # up to the crop's rounding to whole pixels), and their geometric mean.
        sx, sy = plain["intrinsics"].fx / eval_k.fx, plain["intrinsics"].fy / eval_k.fy
        zoom = float(np.sqrt(sx * sy))
        assert cam["intrinsics"].fx == pytest.approx(eval_k.fx, rel=0.01)   # focal length kept
        assert cam["intrinsics"].fy == pytest.approx(eval_k.fy, rel=0.01)
        assert cam["intrinsics"].fx == pytest.approx(plain["intrinsics"].fx / zoom)
        assert (cam["intrinsics"].cx, cam["intrinsics"].cy) == (plain["intrinsics"].cx, plain["intrinsics"].cy)
        assert (cam["depth_mm"] == round(Z_MM / zoom)).all()                # depth * 1/s
        zooms.append(zoom)
    assert max(zooms) > 1.3                                                  # the crops did zoom


def test_camera_mode_is_a_no_op_for_evaluation():
    s = plane_sample()
    a = augment_eval(s, AugmentConfig(size=(120, 160), scale_depth="camera"))
    b = augment_eval(s, AugmentConfig(size=(120, 160)))
    assert np.array_equal(a["depth_mm"], b["depth_mm"]) and a["intrinsics"] == b["intrinsics"]
