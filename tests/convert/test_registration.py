"""Registration against exact geometry: a tilted plane and a box seen by two cameras with a real
Femto Bolt calibration (depth 512x512 with strong rational distortion, colour scaled to 1280x720)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from vortex_data.fixtures.femto import AABB, Plane, raycast_depth
from vortex_data.convert.registration import (CameraModel, nearest_rotation, pixel_rays, project, register_color_to_depth,
                                              register_depth_to_color, undistort_image, zbuffer)

PLANES = [Plane((0.0, -0.5, 1.0), 2.2)]                 # tilted: farther toward the top
BOXES = [AABB((-0.35, -0.25, 1.0), (0.15, 0.30, 1.4))]  # a box floating in front of it


def camera_from_info(path, size=None) -> CameraModel:
    info = json.loads(path.read_text())
    K = np.asarray(info["K"], float)
    cam = CameraModel(info["width"], info["height"], K[0, 0], K[1, 1], K[0, 2], K[1, 2], tuple(info["D"]))
    return cam.resized(*size) if size else cam


@pytest.fixture(scope="module")
def rig(samples_dir):
    fb = samples_dir / "femto_bolt"
    depth = camera_from_info(fb / "depth_camera_info.json")
    color = camera_from_info(fb / "rgb_camera_info.json", (1280, 720))
    ext = json.loads((fb / "extrinsic_depth_to_color.json").read_text())
    return depth, color, nearest_rotation(ext["R"]), np.asarray(ext["t"], float)


@pytest.fixture(scope="module")
def scene_depths(rig):
    depth_cam, color_cam, R, t = rig
    d_depth = raycast_depth(depth_cam, np.eye(3), np.zeros(3), PLANES, BOXES)
    d_color = raycast_depth(color_cam, R, t, PLANES, BOXES)
    depth_mm = np.rint(d_depth * 1000).astype(np.uint16)
    return depth_mm, d_color


def edge_mask(depth_m: np.ndarray, px: int = 2) -> np.ndarray:
    """Pixels within px of a depth discontinuity (or of the invalid border)."""
    grad = np.maximum(np.abs(np.diff(depth_m, axis=0, prepend=depth_m[:1])), np.abs(np.diff(depth_m, axis=1, prepend=depth_m[:, :1])))
    edges = ((grad > 0.05) | (depth_m == 0)).astype(np.uint8)
    return cv2.dilate(edges, np.ones((2 * px + 1, 2 * px + 1), np.uint8)).astype(bool)


def occluded_from_depth(rig, d_color: np.ndarray, d_depth_m: np.ndarray) -> np.ndarray:
    """Colour pixels whose surface point the depth camera cannot see (something nearer hides it)."""
    depth_cam, color_cam, R, t = rig
    table = pixel_rays(color_cam)
    z = d_color.reshape(-1)
    p_c = np.concatenate([table.rays, np.ones((len(z), 1))], axis=1) * z[:, None]
    p_d = (p_c - t) @ R                                    # R^T (p_c - t)
    uv, vis = project(p_d, depth_cam)
    col, row = np.rint(uv[:, 0]).astype(int), np.rint(uv[:, 1]).astype(int)
    vis &= table.ok & (z > 0) & (col >= 0) & (col < depth_cam.width) & (row >= 0) & (row < depth_cam.height)
    seen = np.zeros(len(z))
    seen[vis] = d_depth_m[row[vis], col[vis]]
    return (vis & (seen > 0) & (p_d[:, 2] > seen + 0.05)).reshape(d_color.shape)


def test_projection_matches_opencv(rig):
    depth_cam = rig[0]
    pts = np.random.default_rng(0).uniform([-0.8, -0.8, 0.5], [0.8, 0.8, 3.0], (500, 3))
    ours, ok = project(pts, depth_cam)
    ref, _ = cv2.projectPoints(pts, np.zeros(3), np.zeros(3), depth_cam.K, np.asarray(depth_cam.dist))
    assert ok.all()
    np.testing.assert_allclose(ours, ref.reshape(-1, 2), atol=1e-6)


def test_pixel_rays_reproject(rig):
    depth_cam = rig[0]
    table = pixel_rays(depth_cam)
    ok = table.ok
    assert ok.mean() > 0.9  # the strongly distorted depth lens still undistorts almost everywhere
    uv, _ = project(np.concatenate([table.rays, np.ones((len(ok), 1))], axis=1), depth_cam)
    u, v = np.meshgrid(np.arange(depth_cam.width), np.arange(depth_cam.height))
    err = np.hypot(uv[:, 0] - u.ravel(), uv[:, 1] - v.ravel())[ok]
    assert err.max() < 0.05


def test_registered_depth_matches_analytic(rig, scene_depths):
    depth_cam, color_cam, R, t = rig
    depth_mm, d_color = scene_depths
    reg = register_depth_to_color(depth_mm, depth_cam, color_cam, R, t)
    assert reg.depth_mm.shape == (720, 1280) and reg.depth_mm.dtype == np.uint16
    assert reg.camera == color_cam
    got = reg.depth_mm.astype(float) / 1000
    interior = (got > 0) & (d_color > 0) & ~edge_mask(d_color)
    assert interior.sum() > 0.3 * got.size
    rel = np.abs(got[interior] - d_color[interior]) / d_color[interior]
    assert rel.max() < 0.01, rel.max()
    assert np.median(rel) < 0.002
    # splatting leaves no pinholes inside surfaces the depth camera sees
    occluded = occluded_from_depth(rig, d_color, depth_mm / 1000)
    seen_interior = (d_color > 0) & ~edge_mask(d_color, 3) & ~cv2.dilate(occluded.astype(np.uint8), np.ones((7, 7))).astype(bool)
    in_depth_fov = cv2.erode((got > 0).astype(np.uint8), np.ones((9, 9))).astype(bool) | (got > 0)
    assert (got[seen_interior & in_depth_fov] > 0).mean() > 0.995


def test_occluded_pixels_are_invalid(rig, scene_depths):
    depth_cam, color_cam, R, t = rig
    depth_mm, d_color = scene_depths
    occluded = occluded_from_depth(rig, d_color, depth_mm / 1000)
    # A depth pixel is ~3 colour pixels wide: its silhouette is only known to that precision.
    core = cv2.erode(occluded.astype(np.uint8), np.ones((5, 5))).astype(bool)
    assert core.sum() > 200, "the scene must produce a visible occlusion shadow"
    reg = register_depth_to_color(depth_mm, depth_cam, color_cam, R, t)
    assert (reg.depth_mm[core] == 0).all()


def test_without_splat_upsampling_leaves_pinholes(rig, scene_depths):
    depth_cam, color_cam, R, t = rig
    depth_mm, d_color = scene_depths
    one = register_depth_to_color(depth_mm, depth_cam, color_cam.resized(2560, 1440), R, t, splat=1).depth_mm
    auto = register_depth_to_color(depth_mm, depth_cam, color_cam.resized(2560, 1440), R, t).depth_mm
    assert (auto > 0).sum() > 1.5 * (one > 0).sum()


def test_zbuffer_nearest_wins():
    uv = np.array([[1.2, 0.9], [0.8, 1.1], [3.0, 0.0], [9.0, 9.0]])
    out = zbuffer(uv, np.array([2000.0, 1500.0, 700.0, 100.0]), 4, 2)
    assert out[1, 1] == 1500 and out[0, 3] == 700 and out.sum() == 2200


def test_out_size_and_undistort(rig, scene_depths):
    depth_cam, color_cam, R, t = rig
    depth_mm, _ = scene_depths
    small = register_depth_to_color(depth_mm, depth_cam, color_cam, R, t, out_size=(640, 360))
    assert small.depth_mm.shape == (360, 640)
    assert small.camera.fx == pytest.approx(color_cam.fx / 2)
    flat = register_depth_to_color(depth_mm, depth_cam, color_cam, R, t, out_size=(640, 360), undistort=True)
    assert not flat.camera.distorted
    d_color = raycast_depth(flat.camera, R, t, PLANES, BOXES)
    got = flat.depth_mm / 1000
    m = (got > 0) & ~edge_mask(d_color)
    assert (np.abs(got[m] - d_color[m]) / d_color[m]).max() < 0.01


def test_color_to_depth_samples_the_right_surface(rig, scene_depths):
    depth_cam, color_cam, R, t = rig
    depth_mm, d_color = scene_depths
    # Paint the colour image by surface: red where the colour camera sees the box, blue elsewhere.
    box_in_color = (d_color > 0) & (d_color < 1.45)
    rgb = np.zeros((720, 1280, 3), np.uint8)
    rgb[box_in_color] = (255, 0, 0)
    rgb[~box_in_color & (d_color > 0)] = (0, 0, 255)
    reg = register_color_to_depth(rgb, depth_mm, depth_cam, color_cam, R, t)
    assert reg.rgb.shape == (512, 512, 3) and reg.camera == depth_cam
    z = depth_mm / 1000
    # bilinear colour sampling blends across colour edges: skip pixels next to a depth edge or a hole
    interior = cv2.erode(reg.valid.astype(np.uint8), np.ones((5, 5))).astype(bool) & ~edge_mask(z, 3)
    is_box = (z > 0) & (z < 1.45)
    assert (reg.rgb[interior & is_box][:, 0] > 200).all()
    assert (reg.rgb[interior & ~is_box][:, 2] > 200).all()
    # background the colour camera cannot see (behind the box from its viewpoint) gets no colour
    assert (~reg.valid & (z > 1.45)).sum() > 50
    assert (reg.rgb[~reg.valid] == 0).all()


def test_undistort_image_straightens(rig):
    _, color_cam, _, _ = rig
    img = np.full((720, 1280), 255, np.uint8)
    out = undistort_image(img, color_cam)
    assert out.shape == img.shape and out[360, 640] == 255


def test_nearest_rotation(samples_dir):
    ext = json.loads((samples_dir / "femto_bolt" / "extrinsic_depth_to_color.json").read_text())
    raw = np.asarray(ext["R"], float)
    assert abs(np.linalg.norm(raw[0]) - 1) > 0.005  # the real file is not quite orthonormal
    rot = nearest_rotation(raw)
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    with pytest.raises(ValueError, match="not a rotation"):
        nearest_rotation(np.diag([1.0, 1.0, 0.5]), source="x.json")
