"""Depth metrics and mIoU against an independent numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("timm")

import torch  # noqa: E402

from vortex_data.format.schema import IGNORE_INDEX  # noqa: E402
from vortex_data.train.metrics import DEPTH_METRICS, DepthMeter, SegMeter, eigen_crop_mask  # noqa: E402


def reference_depth(pred: np.ndarray, gt: np.ndarray, lo: float, hi: float, crop: np.ndarray | None) -> dict[str, float]:
    per_image = []
    for p, g in zip(pred, gt):
        p, g = p[0], g[0]
        m = (g > lo) & (g < hi)
        if crop is not None:
            m &= crop
        if not m.any():
            continue
        p, g = np.clip(p[m], lo, hi).astype(np.float64), g[m].astype(np.float64)
        thresh = np.maximum(p / g, g / p)
        per_image.append([np.sqrt(np.mean((p - g) ** 2)), np.mean(np.abs(p - g) / g),
                          np.mean(np.abs(np.log10(p) - np.log10(g))),
                          np.mean(thresh < 1.25), np.mean(thresh < 1.25 ** 2), np.mean(thresh < 1.25 ** 3)])
    return dict(zip(DEPTH_METRICS, np.mean(per_image, 0)))


@pytest.mark.parametrize("eigen", [False, True])
def test_depth_metrics_match_numpy(eigen: bool) -> None:
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.5, 12.0, (3, 1, 48, 64)).astype(np.float32)
    gt[:, :, :5] = 0  # invalid rows
    gt[2] = 0  # an image with no valid pixel is skipped, not averaged as zero
    pred = (gt * rng.uniform(0.6, 1.5, gt.shape) + rng.normal(0, 0.2, gt.shape)).astype(np.float32)
    meter = DepthMeter(min_depth=1e-3, max_depth=10.0, eigen_crop=eigen)
    meter.update(torch.from_numpy(pred[:2]), torch.from_numpy(gt[:2]))
    meter.update(torch.from_numpy(pred[2:]), torch.from_numpy(gt[2:]))
    crop = eigen_crop_mask(48, 64).numpy() if eigen else None
    want = reference_depth(pred, gt, 1e-3, 10.0, crop)
    got = meter.result()
    assert meter.count == 2
    for k in DEPTH_METRICS:
        assert got[k] == pytest.approx(want[k], rel=1e-5), k


def test_eigen_crop_full_size_is_the_published_window() -> None:
    m = eigen_crop_mask(480, 640).numpy()
    rows, cols = np.where(m.any(1))[0], np.where(m.any(0))[0]
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (45, 470, 41, 600)
    assert m.sum() == (470 - 45 + 1) * (600 - 41 + 1)


def test_miou_matches_numpy() -> None:
    rng = np.random.default_rng(1)
    target = rng.integers(0, 5, (2, 16, 16))  # class 5 never occurs in gt ...
    target[0, :4] = IGNORE_INDEX
    logits = rng.normal(size=(2, 6, 16, 16)).astype(np.float32)
    pred = logits.argmax(1)
    meter = SegMeter()
    meter.update(torch.from_numpy(logits), torch.from_numpy(target))
    keep = target != IGNORE_INDEX
    ious = []
    for c in range(6):
        tp = np.sum((pred == c) & (target == c) & keep)
        union = np.sum(((pred == c) | (target == c)) & keep)
        if union:
            ious.append(tp / union)
    assert meter.result()["miou"] == pytest.approx(np.mean(ious), rel=1e-9)
    assert meter.result()["seg_pixels"] == keep.sum()
    assert np.isnan(SegMeter().result()["miou"])
