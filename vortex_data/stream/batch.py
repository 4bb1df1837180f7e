"""Stage 4, decode and CPU geometry: encoded samples -> one batch, the DataLoader workers' whole job.

Per sample: the metadata, then the augmentation draws (they fix the crop box before anything is
decoded, so the JPEG can be decoded DCT-reduced when the box is >= 2x the output), then decode
and the geometry of every map written straight into the batch arrays (no per-sample
intermediates; nothing touches every input pixel except the decoders). uint8 RGB, uint16 depth
and uint8 labels are what crosses the worker boundary with ``photometric="device"`` (the device
phase, :mod:`vortex_data.stream.photometric`, finishes them); ``"cpu"`` finishes here
(:func:`finish_on_cpu`: colour jitter per sample with OpenCV, one table pass uint8 -> normalised
float) with OpenCV/numpy, which stay on one thread, rather than torch ops whose intra-op threads
would fight the DataLoader workers for cores. Then :func:`vortex_data.stream.collate.collate`.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from ..format.integrity import SampleError
from ..format.schema import DEPTH_SCALE_MM, IGNORE_INDEX, SchemaError, decode_sample, read_meta, rgb_bytes
from .augment import (AugmentConfig, JitterParams, apply_geometry, color_jitter, draw_eval, draw_train, intrinsics_of,
                      jpeg_reduction)
from .collate import collate
from .read import RawSample

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_LUTS: dict[tuple, np.ndarray] = {}


def rgb_lut(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(1, 256) 3-channel float32 table: ``(v/255 - mean[c]) / std[c]`` for every uint8 ``v``."""
    k = (tuple(mean), tuple(std))
    if k not in _LUTS:
        v = np.arange(256, dtype=np.float64)[:, None] / 255.0
        _LUTS[k] = ((v - np.asarray(mean)) / np.asarray(std)).astype(np.float32).reshape(1, 256, 3)
    return _LUTS[k]


def normalise_into(rgb: np.ndarray, dst: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """uint8 (H,W,3) -> normalised float32 written into ``dst``, one table pass (same bits as the
    device phase's :func:`vortex_data.stream.photometric.normalise`)."""
    return cv2.LUT(np.ascontiguousarray(rgb), rgb_lut(mean, std), dst=dst)


def finish_on_cpu(rgb: np.ndarray, jitters: Sequence[JitterParams | None], mean: Sequence[float],
                  std: Sequence[float]) -> tuple[np.ndarray, float]:
    """The photometric phase on the CPU: each sample's colour jitter, then normalisation, into a
    new (B,H,W,3) float32 array; returns it and the seconds the jitter took."""
    out = np.empty(rgb.shape, np.float32)
    t_jit = 0.0
    for i, j in enumerate(jitters):
        t1 = time.perf_counter()
        x = color_jitter(rgb[i], j) if j is not None else rgb[i]
        t_jit += time.perf_counter() - t1
        normalise_into(x, out[i], mean, std)
    return out, t_jit


def build_batch(samples: Sequence[RawSample], cfg: AugmentConfig, augmenting: bool, seed: int, epoch: int, *,
                photometric: str = "cpu", decode: str = "cpu", mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD, timing: dict[str, float] | None = None) -> dict[str, Any]:
    """Encoded samples -> one batch (fields: see :func:`vortex_data.stream.make_loader`).

    A sample that does not decode raises :class:`SampleError` naming its shard and key (the
    integrity stage replaces it or stops). ``timing``: filled with decode / augment / collate
    seconds for the batch.
    """
    oh, ow = cfg.size
    b = len(samples)
    rgb = None if decode == "device" else np.empty((b, oh, ow, 3), np.uint8)
    depth = np.empty((b, 1, oh, ow), np.uint16)
    seg = np.empty((b, oh, ow), np.uint8)
    factors = np.full((b, 4), np.nan)
    order = np.tile(np.arange(4), (b, 1))
    boxes, flips, jpegs, intrinsics, has_seg, jitters = [], [], [], [], [], []
    t_dec = t_aug = 0.0
    for i, smp in enumerate(samples):
        t0 = time.perf_counter()
        if decode == "device" and "rgb.jpg" not in smp.members:  # a setting that does not fit the data
            raise SchemaError(f"{smp.shard}: sample {smp.key!r}: decode='device' needs JPEG RGB, the shard stores "
                              f"{[e for e in smp.members if e.startswith('rgb.')]}")
        try:
            meta = read_meta(smp.members, smp.key)
            h, w = int(meta["height"]), int(meta["width"])
            draw = (draw_train(smp.key, h, w, cfg, seed, epoch, smp.repeat) if augmenting else draw_eval(h, w, cfg))
            if decode == "device":
                jpegs.append(torch.frombuffer(bytearray(rgb_bytes(smp.members, smp.key)), dtype=torch.uint8))
            reduce = jpeg_reduction(draw.box, cfg.size) if rgb is not None and "rgb.jpg" in smp.members else 1
            d = decode_sample(smp.members, smp.key, with_rgb=rgb is not None, rgb_reduce=reduce, fill_seg=False,
                              meta=meta)
            d["intrinsics"] = intrinsics_of(meta)
        except (SchemaError, KeyError, ValueError) as e:  # names the shard, so the bad sample can be found
            raise SampleError(smp.shard, smp.key, None, str(e).removeprefix(f"sample {smp.key!r}: ")) from None
        t1 = time.perf_counter()
        if d["seg"] is None:
            seg[i] = IGNORE_INDEX
        out = {"depth_mm": depth[i, 0], "seg": seg[i]}
        if rgb is not None:
            out["rgb"] = rgb[i]
        k = apply_geometry(d, draw, cfg.size, out, reduce, cfg.scale_depth)["intrinsics"]
        if draw.jitter is not None:
            j = draw.jitter
            factors[i] = [np.nan if v is None else v for v in (j.brightness, j.contrast, j.saturation, j.hue)]
            order[i] = j.order
        jitters.append(draw.jitter)
        boxes.append(draw.box)
        flips.append(draw.flip)
        intrinsics.append((k.fx, k.fy, k.cx, k.cy))
        has_seg.append(bool(d["has_seg"]))
        t_aug += time.perf_counter() - t1
        t_dec += t1 - t0
    t0 = time.perf_counter()
    fields: dict[str, Any] = dict(seg=seg, has_seg=has_seg, dataset=[smp.source for smp in samples],
                                  key=[smp.key for smp in samples], intrinsics=intrinsics)
    t_jit = 0.0
    if photometric == "cpu":
        rgbf, t_jit = finish_on_cpu(rgb, jitters, mean, std)
        batch = collate(rgb=rgbf, depth=np.multiply(depth, np.float32(1.0 / DEPTH_SCALE_MM), dtype=np.float32),
                        **fields)
    elif rgb is not None:
        batch = collate(rgb=rgb, depth=depth, jitter=factors, jitter_order=order.astype(np.int64), **fields)
    else:
        batch = collate(depth=depth, jitter=factors, jitter_order=order.astype(np.int64), jpeg=jpegs,
                        crop=np.asarray(boxes, dtype=np.int64).reshape(b, 4), flip=np.asarray(flips, dtype=bool),
                        **fields)
    if timing is not None:
        timing.update(decode=t_dec, augment=t_aug + t_jit, collate=time.perf_counter() - t0 - t_jit)
    return batch
