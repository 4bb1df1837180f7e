"""V5 augmentation: torchvision ColorJitter formulas, joint geometry, nearest-only depth."""

import numpy as np
import pytest
import torch

from vortex_data.stream.augment import (AugmentConfig, JitterParams, adjust_brightness, adjust_contrast, adjust_hue,
                                 adjust_saturation, augment_eval, augment_train, color_jitter, hflip, jitter_params)
from vortex_data.stream.mixture import rng_for
from vortex_data.format.geometry import Intrinsics

# ---- torchvision's tensor formulas (torchvision.transforms._functional_tensor), transcribed in torch


def tv_gray(img):
    r, g, b = img.unbind(dim=-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(img.dtype).unsqueeze(-3)


def tv_blend(a, b, ratio):
    return (ratio * a + (1.0 - ratio) * b).clamp(0, 255).to(a.dtype)


def tv_brightness(img, f):
    return tv_blend(img, torch.zeros_like(img), f)


def tv_contrast(img, f):
    mean = torch.mean(tv_gray(img).to(torch.float32), dim=(-3, -2, -1), keepdim=True)
    return tv_blend(img, mean, f)


def tv_saturation(img, f):
    return tv_blend(img, tv_gray(img), f)


def tv_rgb2hsv(img):
    r, g, b = img.unbind(dim=-3)
    maxc, minc = torch.max(img, dim=-3).values, torch.min(img, dim=-3).values
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    crd = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / crd, (maxc - g) / crd, (maxc - b) / crd
    h = (maxc == r) * (bc - gc) + ((maxc == g) & (maxc != r)) * (2.0 + rc - bc) \
        + ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    return torch.stack((torch.fmod(h / 6.0 + 1.0, 1.0), s, maxc), dim=-3)


def tv_hsv2rgb(img):
    h, s, v = img.unbind(dim=-3)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int32) % 6
    p = torch.clamp(v * (1.0 - s), 0.0, 1.0)
    q = torch.clamp(v * (1.0 - s * f), 0.0, 1.0)
    t = torch.clamp(v * (1.0 - s * (1.0 - f)), 0.0, 1.0)
    mask = i.unsqueeze(-3) == torch.arange(6).view(-1, 1, 1)
    a4 = torch.stack((torch.stack((v, q, p, p, t, v), -3), torch.stack((t, v, v, q, p, p), -3),
                      torch.stack((p, p, t, v, v, q), -3)), -4)
    return torch.einsum("...ijk, ...xijk -> ...xjk", mask.to(img.dtype), a4)


def tv_hue(img, f):
    hsv = tv_rgb2hsv(img.to(torch.float32) / 255)
    h, s, v = hsv.unbind(-3)
    rgb = tv_hsv2rgb(torch.stack(((h + f) % 1.0, s, v), -3))
    return rgb.mul(255 + 1.0 - 1e-3).to(torch.uint8)


def to_t(rgb):
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)


def from_t(t):
    return t.permute(1, 2, 0).numpy()


@pytest.fixture
def photo():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    return np.repeat(np.repeat(base, 4, 0), 4, 1)  # 48x64, large flat patches and random colours


@pytest.mark.parametrize("f", [0.6, 0.93, 1.0, 1.37])
def test_brightness_contrast_saturation_match_torchvision_exactly(photo, f):
    assert np.array_equal(adjust_brightness(photo, f), from_t(tv_brightness(to_t(photo), f)))
    assert np.array_equal(adjust_contrast(photo, f), from_t(tv_contrast(to_t(photo), f)))
    assert np.array_equal(adjust_saturation(photo, f), from_t(tv_saturation(to_t(photo), f)))


@pytest.mark.parametrize("f", [-0.1, -0.03, 0.05, 0.1, 0.5])
def test_hue_matches_torchvision_within_one_level(photo, f):
    ours, ref = adjust_hue(photo, f).astype(int), from_t(tv_hue(to_t(photo), f)).astype(int)
    diff = np.abs(ours - ref)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02


def test_jitter_params_ranges_and_random_order():
    cfg = AugmentConfig(brightness=0.4, contrast=0.2, saturation=0.0, hue=0.1)
    orders = set()
    for i in range(200):
        p = jitter_params(rng_for(0, i), cfg)
        assert sorted(p.order) == [0, 1, 2, 3]
        orders.add(p.order)
        assert 0.6 <= p.brightness <= 1.4 and 0.8 <= p.contrast <= 1.2 and -0.1 <= p.hue <= 0.1
        assert p.saturation is None  # strength 0 = not applied, like torchvision's None
    assert len(orders) > 12


def test_color_jitter_applies_in_the_drawn_order(photo):
    p = JitterParams((3, 0, 2, 1), 1.3, 0.7, 1.2, 0.08)
    ref = tv_contrast(tv_saturation(tv_brightness(tv_hue(to_t(photo), 0.08), 1.3), 1.2), 0.7)
    diff = np.abs(color_jitter(photo, p).astype(int) - from_t(ref).astype(int))
    assert diff.max() <= 2 and (diff > 0).mean() < 0.05


# ---- geometry

def blocks(h=60, w=80, b=10):
    """Each 10x10 block has its own colour, depth (>255 mm, never 0) and label."""
    yy, xx = np.mgrid[0:h, 0:w]
    bid = (yy // b) * (w // b) + xx // b
    rng = np.random.default_rng(5)
    colours = rng.integers(0, 256, (bid.max() + 1, 3), dtype=np.uint8)
    depth = (1000 + 37 * bid).astype(np.uint16)
    depth[0, 0] = 0  # one invalid pixel
    return {"key": "t/train/blocks", "rgb": colours[bid], "depth_mm": depth, "seg": (bid % 6).astype(np.uint8),
            "has_seg": True, "intrinsics": Intrinsics(70.0, 71.0, 39.5, 29.5)}, colours


NO_COLOUR = dict(brightness=0, contrast=0, saturation=0, hue=0)


@pytest.mark.parametrize("epoch", range(6))
def test_geometry_keeps_rgb_depth_labels_aligned(epoch):
    s, colours = blocks()
    cfg = AugmentConfig(size=(48, 64), scale=(0.3, 1.0), **NO_COLOUR)
    out = augment_train(s, cfg, seed=0, epoch=epoch)
    d = out["depth_mm"].astype(int)
    valid = d > 0
    bid = (d - 1000) // 37
    assert np.all(out["seg"][valid] == bid[valid] % 6)
    # Interior pixels (7x7 neighbourhood in one block, wider than the bilinear support when
    # upsampling) carry their block's colour.
    r = 3
    pad = np.pad(d, r, mode="edge")
    interior = valid & np.all([pad[r + dy:r + dy + d.shape[0], r + dx:r + dx + d.shape[1]] == d
                               for dy in range(-r, r + 1) for dx in range(-r, r + 1)], axis=0)
    assert interior.sum() > 50
    err = np.abs(out["rgb"][interior].astype(int) - colours[bid[interior]].astype(int))
    assert err.max() <= 2


def test_depth_values_are_never_interpolated_or_rescaled():
    rng = np.random.default_rng(1)
    s, _ = blocks()
    s["depth_mm"] = rng.integers(0, 9000, s["depth_mm"].shape).astype(np.uint16)
    s["depth_mm"][rng.random(s["depth_mm"].shape) < 0.2] = 0
    allowed = set(np.unique(s["depth_mm"]).tolist())
    for epoch in range(5):
        for size in [(30, 40), (96, 128)]:  # down- and up-sampling
            out = augment_train(s, AugmentConfig(size=size), seed=2, epoch=epoch)
            assert out["depth_mm"].dtype == np.uint16 and out["depth_mm"].shape == size
            assert set(np.unique(out["depth_mm"]).tolist()) <= allowed


def test_flip_mirrors_principal_point_and_intrinsics_follow_crop():
    s, _ = blocks()
    f = hflip(s)
    assert f["intrinsics"].cx == 79 - 39.5 and np.array_equal(f["depth_mm"], s["depth_mm"][:, ::-1])
    ev = augment_eval(s, AugmentConfig(size=(30, 40)))  # same aspect: a plain 2x downscale
    k = ev["intrinsics"]
    assert (k.fx, k.fy) == (35.0, 35.5) and k.cx == pytest.approx((39.5 + 0.5) / 2 - 0.5)


def test_intrinsics_agree_with_rendering_the_scene_at_the_new_camera():
    from vortex_data.fixtures.scene import Room, View, render

    room = Room()
    w, h = 160, 120
    rgb, depth, seg = render(room, View(120, 120, 79.5, 59.5, w, h), noise_seed=None)
    s = {"key": "t/train/room", "rgb": rgb, "depth_mm": np.rint(depth * 1000).astype(np.uint16), "seg": seg,
         "has_seg": True, "intrinsics": Intrinsics(120, 120, 79.5, 59.5)}
    cfg = AugmentConfig(size=(60, 80), flip_p=0.0, **NO_COLOUR)  # flips: see the test above
    for epoch in range(3):
        out = augment_train(s, cfg, seed=4, epoch=epoch)
        k = out["intrinsics"]
        _, ref_depth, ref_seg = render(room, View(k.fx, k.fy, k.cx, k.cy, 80, 60), noise_seed=None)
        rel = np.abs(out["depth_mm"] / 1000 - ref_depth) / ref_depth
        assert np.median(rel) < 0.02 and np.mean(rel < 0.05) > 0.95
        assert np.mean(out["seg"] == ref_seg) > 0.95


def test_same_seed_epoch_key_same_result_and_epochs_differ():
    s, _ = blocks()
    cfg = AugmentConfig(size=(48, 64))
    a, b = augment_train(s, cfg, 0, 3), augment_train(s, cfg, 0, 3)
    assert np.array_equal(a["rgb"], b["rgb"]) and np.array_equal(a["depth_mm"], b["depth_mm"])
    c = augment_train(s, cfg, 0, 4)
    assert not np.array_equal(a["rgb"], c["rgb"])
    e1, e2 = augment_eval(s, cfg), augment_eval(s, cfg)
    assert np.array_equal(e1["rgb"], e2["rgb"])
