"""Depth metrics (Eigen et al. 2014 protocol) and 6-class mIoU from an accumulated confusion matrix."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from vortex_data.format.schema import IGNORE_INDEX, NUM_CLASSES

DEPTH_METRICS = ("rmse", "abs_rel", "log10", "d1", "d2", "d3")
# Eigen crop for a 480x640 NYU frame: rows 45..470, cols 41..600 inclusive.
EIGEN_CROP_480x640 = (45, 471, 41, 601)


def eigen_crop_mask(height: int, width: int) -> torch.Tensor:
    """Boolean (H, W) mask of the Eigen crop, scaled from 480x640 to this size."""
    y0, y1, x0, x1 = EIGEN_CROP_480x640
    mask = torch.zeros(height, width, dtype=torch.bool)
    mask[round(y0 * height / 480):round(y1 * height / 480), round(x0 * width / 640):round(x1 * width / 640)] = True
    return mask


def per_image_depth_metrics(pred: torch.Tensor, gt: torch.Tensor, min_depth: float = 1e-3, max_depth: float = 10.0,
                            eigen_crop: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,1,H,W) prediction and ground truth in metres -> ((B, 6) metrics, (B,) has-valid-pixels).

    Valid pixels: min_depth < gt < max_depth (and inside the Eigen crop if asked); predictions
    are clamped to [min_depth, max_depth]. Columns follow DEPTH_METRICS.
    """
    h, w = gt.shape[-2:]
    pred = pred.detach().float().flatten(1).clamp(min_depth, max_depth)
    gt = gt.detach().float().flatten(1)
    valid = (gt > min_depth) & (gt < max_depth)
    if eigen_crop:
        valid &= eigen_crop_mask(h, w).flatten().to(gt.device)
    n = valid.sum(1)
    safe_gt = torch.where(valid, gt, torch.ones_like(gt))
    safe_pred = torch.where(valid, pred, torch.ones_like(pred))
    ratio = torch.maximum(safe_pred / safe_gt, safe_gt / safe_pred)

    def mean(x: torch.Tensor) -> torch.Tensor:
        return torch.where(valid, x, torch.zeros_like(x)).sum(1) / n.clamp_min(1)

    out = torch.stack([
        mean((safe_pred - safe_gt) ** 2).sqrt(),
        mean((safe_pred - safe_gt).abs() / safe_gt),
        mean((torch.log10(safe_pred) - torch.log10(safe_gt)).abs()),
        mean((ratio < 1.25).float()),
        mean((ratio < 1.25 ** 2).float()),
        mean((ratio < 1.25 ** 3).float()),
    ], dim=1)
    return out, n > 0


@dataclass
class DepthMeter:
    """Per-image depth metrics averaged over images that have at least one valid pixel."""

    min_depth: float = 1e-3
    max_depth: float = 10.0
    eigen_crop: bool = False
    sums: np.ndarray = field(default_factory=lambda: np.zeros(len(DEPTH_METRICS)))
    count: int = 0

    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        m, ok = per_image_depth_metrics(pred, gt, self.min_depth, self.max_depth, self.eigen_crop)
        self.sums += m[ok].double().sum(0).cpu().numpy()
        self.count += int(ok.sum())

    def result(self) -> dict[str, float]:
        if self.count == 0:
            return {k: float("nan") for k in DEPTH_METRICS}
        return dict(zip(DEPTH_METRICS, (self.sums / self.count).tolist()))


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int = NUM_CLASSES,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts, rows = ground truth, cols = prediction; 255 skipped."""
    keep = target != ignore_index
    t, p = target[keep].long(), pred[keep].long()
    return torch.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass
class SegMeter:
    """mIoU over the classes that occur (in ground truth or prediction) in the accumulated matrix."""

    num_classes: int = NUM_CLASSES
    matrix: np.ndarray = field(default_factory=lambda: np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64))

    def update(self, logits: torch.Tensor, target: torch.Tensor) -> None:
        cm = confusion_matrix(logits.argmax(1), target, self.num_classes)
        self.matrix += cm.cpu().numpy()

    def iou(self) -> np.ndarray:
        """Per-class IoU = TP / (TP + FP + FN); NaN for a class absent from both."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    def result(self) -> dict[str, float]:
        iou = self.iou()
        labelled = int(self.matrix.sum())
        return {"miou": float(np.nanmean(iou)) if labelled else float("nan"), "seg_pixels": labelled}
