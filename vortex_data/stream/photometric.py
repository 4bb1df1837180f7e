"""The device phase of V5 augmentation: a raw batch -> the documented float batch, on any device.

With ``make_loader(..., photometric="device")`` the workers ship compact batches: uint8 RGB
(B,3,H,W) in channels-last memory, uint16 depth millimetres, uint8 labels and the per-sample
ColorJitter draws (``jitter``: factors (B,4) float64 for brightness, contrast, saturation, hue,
NaN = not applied; ``jitter_order``: (B,4) int64, torchvision's ``fn_idx``). :func:`finish_batch`
then runs, batched on whatever device the batch is on: the colour jitter, the normalisation,
depth mm -> metres and labels -> int64. With ``decode="device"`` it first decodes the JPEGs
(``torchvision.io.decode_jpeg``, nvJPEG on CUDA) and does the RGB crop, resize and flip there.

The jitter follows torchvision.transforms.v2's tensor kernels op for op (blend =
``img*f + other*(1-f)`` clamped and truncated, grayscale ``0.2989R + 0.587G + 0.114B`` floored,
contrast against the mean grayscale, hue through torchvision's hexcone HSV) with the factor a
per-sample tensor instead of a Python float, so one kernel serves the whole batch.

The device phase is one function of device tensors with fixed shapes and no data-dependent
branch (:func:`device_phase`): the jitter parameters go to the device in one copy, and at each
of the four steps every operation runs on the whole batch and ``torch.where`` keeps, per sample,
the one that sample draws there. On CUDA it runs compiled (``torch.compile``, a handful of fused
kernels instead of a few hundred small ones and no host synchronisation); elsewhere eagerly.
Normalisation is the CPU path's float32 table (:func:`vortex_data.stream.batch.rgb_lut`) gathered
on the device: float32 throughout, the same bits as the workers' OpenCV path.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch

from ..format.schema import DEPTH_SCALE_MM
from .augment import BRIGHTNESS, CONTRAST, HUE, SATURATION

HOST_FIELDS = ("jitter", "jitter_order", "crop", "flip", "jpeg")
"""Batch fields :func:`to_device` leaves on the host (small parameters, or JPEG bytes that the
decoder takes from host memory)."""

def to_device(batch: dict[str, Any], device: torch.device | str, non_blocking: bool = True) -> dict[str, Any]:
    """The batch with its tensors on ``device`` (asynchronous copies from pinned memory), except
    :data:`HOST_FIELDS`."""
    return {k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) and k not in HOST_FIELDS else v
            for k, v in batch.items()}


def is_finished(batch: dict[str, Any]) -> bool:
    return "jpeg" not in batch and batch["rgb"].is_floating_point()


def finish_batch(batch: dict[str, Any], mean: Sequence[float], std: Sequence[float],
                 compiled: bool | None = None) -> dict[str, Any]:
    """Raw (``photometric="device"``) batch -> finished batch on the batch's device; a batch that
    is already finished is returned as it is. Fields: see ``make_loader``. ``compiled``: run
    :func:`device_phase` through torch.compile (None: on CUDA only)."""
    if is_finished(batch):
        return batch
    out = {k: v for k, v in batch.items() if k not in HOST_FIELDS}
    device = batch["depth"].device
    if "jpeg" in batch:
        rgb = decode_jpeg_batch(batch["jpeg"], batch["crop"], batch["flip"], tuple(batch["depth"].shape[-2:]), device)
    else:
        rgb = batch["rgb"]
    params = None
    if "jitter" in batch and not bool(torch.isnan(batch["jitter"]).all()):  # host tensor; all NaN: no jitter
        params = jitter_params(batch["jitter"], batch["jitter_order"], device)
    table = rgb_table(mean, std, device)
    finished = None
    if (device.type == "cuda" if compiled is None else compiled) and not _COMPILE_FAILED:
        try:
            finished = _compiled_phase()(rgb, params, table)
        except Exception as e:  # noqa: BLE001 - no compiler toolchain here: the same function, eagerly
            _COMPILE_FAILED.append(f"{type(e).__name__}: {e}")
            warnings.warn(f"the device phase could not be compiled, running it eagerly: {_COMPILE_FAILED[0][:300]}")
    out["rgb"] = device_phase(rgb, params, table) if finished is None else finished
    out["depth"] = batch["depth"].to(torch.float32).mul_(1.0 / DEPTH_SCALE_MM)
    out["seg"] = batch["seg"].long()
    return out


def device_phase(rgb: torch.Tensor, params: torch.Tensor | None, table: torch.Tensor) -> torch.Tensor:
    """uint8 (B,3,H,W) -> colour-jittered (``params`` from :func:`jitter_params`; None: none) and
    normalised float32, channels-last. Device tensors in, no host synchronisation, fixed shapes."""
    if params is not None:
        rgb = color_jitter_device(rgb, params)
    return normalise_by_table(rgb, table)


_COMPILED: list[Any] = []
_COMPILE_FAILED: list[str] = []


def _compiled_phase() -> Any:
    """:func:`device_phase` through torch.compile, made once per process (static shapes: a
    batch of another size compiles once more)."""
    if not _COMPILED:
        _COMPILED.append(torch.compile(device_phase, dynamic=False))
    return _COMPILED[0]


_TABLES: dict[tuple, torch.Tensor] = {}


def rgb_table(mean: Sequence[float], std: Sequence[float], device: torch.device | str) -> torch.Tensor:
    """The CPU path's normalisation table (:func:`vortex_data.stream.batch.rgb_lut`) as a flat
    (3*256,) float32 tensor on ``device``, channel-major; made once per device."""
    key = (tuple(mean), tuple(std), str(device))
    if key not in _TABLES:
        from .batch import rgb_lut

        lut = torch.from_numpy(rgb_lut(mean, std).reshape(256, 3).T.copy())  # (3, 256)
        _TABLES[key] = lut.reshape(-1).to(device)
    return _TABLES[key]


def normalise(rgb: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B,3,H,W) -> ``(x/255 - mean) / std`` float32, channels-last: the same bits as the
    CPU path's table (:func:`vortex_data.stream.batch.rgb_lut`), which it gathers from."""
    return normalise_by_table(rgb, rgb_table(mean, std, rgb.device))


def normalise_by_table(rgb: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """:func:`normalise` with the table (:func:`rgb_table`) given: one gather, in (B,H,W,3)
    order, so the result is channels-last without a copy."""
    nhwc = rgb.permute(0, 2, 3, 1).to(torch.int64)  # a new tensor (uint8 in): offset in place
    nhwc.add_(torch.arange(3, device=rgb.device, dtype=torch.int64).mul_(256))
    return table.take(nhwc).permute(0, 3, 1, 2)


# ---------------------------------------------------------------- ColorJitter, batched

def _gray(img: torch.Tensor) -> torch.Tensor:
    """torchvision v2 ``_rgb_to_grayscale_image`` (float result), floored as its uint8 callers do."""
    r, g, b = img.unbind(dim=-3)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).unsqueeze(dim=-3).floor_()


def _factor(f: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return f.to(device=like.device, dtype=torch.float32, non_blocking=True).view(-1, 1, 1, 1)


def _blend(img: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision v2 ``_blend`` for uint8 with a per-sample ratio: ``img*r + other*(1-r)``, with
    ``1-r`` formed in float64 before rounding to float32 as torchvision does for its Python float."""
    return img.mul(_factor(ratio, img)).addcmul_(other, _factor(1.0 - ratio, img)).clamp_(0, 255).to(torch.uint8)


def adjust_brightness(img: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return img.mul(_factor(f, img)).clamp_(0, 255).to(torch.uint8)


def adjust_contrast(img: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(img, torch.mean(_gray(img), dim=(-3, -2, -1), keepdim=True), f)


def adjust_saturation(img: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return _blend(img, _gray(img), f)


def _rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """torchvision v2 ``_rgb_to_hsv`` (PIL's hexcone model), transcribed so the core package
    needs only torch."""
    r, g, _ = image.unbind(dim=-3)
    minc, maxc = torch.aminmax(image, dim=-3)
    eqc = maxc == minc
    channels_range = maxc - minc
    ones = torch.ones_like(maxc)
    s = channels_range / torch.where(eqc, ones, maxc)
    divisor = torch.where(eqc, ones, channels_range).unsqueeze_(dim=-3)
    rc, gc, bc = ((maxc.unsqueeze(dim=-3) - image) / divisor).unbind(dim=-3)
    neq_r = maxc != r
    eq_g = maxc == g
    hg = rc.add(2.0).sub_(bc).mul_(eq_g & neq_r)
    hr = bc.sub_(gc).mul_(~neq_r)
    hb = gc.add_(4.0).sub_(rc).mul_(neq_r.logical_and_(eq_g.logical_not_()))
    h = hr.add_(hg).add_(hb).mul_(1.0 / 6.0).add_(1.0).fmod_(1.0)
    return torch.stack((h, s, maxc), dim=-3)


_SELECT = ((0, 2, 1, 1, 3, 0), (3, 0, 0, 2, 1, 1), (1, 1, 3, 0, 0, 2))
_SELECT_ON: dict[str, torch.Tensor] = {}


def _select_table(device: torch.device) -> torch.Tensor:
    """``_SELECT`` on ``device``, copied there once (a copy per call would wait for the stream)."""
    if torch.compiler.is_compiling():
        return torch.tensor(_SELECT, dtype=torch.long, device=device)  # a constant of the graph
    if str(device) not in _SELECT_ON:
        _SELECT_ON[str(device)] = torch.tensor(_SELECT, dtype=torch.long, device=device)
    return _SELECT_ON[str(device)]


def _hsv_to_rgb(img: torch.Tensor) -> torch.Tensor:
    """torchvision v2 ``_hsv_to_rgb``, transcribed."""
    h, s, v = img.unbind(dim=-3)
    h6 = h.mul(6)
    i = torch.floor(h6)
    f = h6.sub_(i)
    i = i.to(dtype=torch.int32)
    sxf = s * f
    one_minus_s = 1.0 - s
    q = (1.0 - sxf).mul_(v).clamp_(0.0, 1.0)
    t = sxf.add_(one_minus_s).mul_(v).clamp_(0.0, 1.0)
    p = one_minus_s.mul_(v).clamp_(0.0, 1.0)
    i.remainder_(6)
    vpqt = torch.stack((v, p, q, t), dim=-3)
    select = _select_table(img.device)[:, i].moveaxis(0, -3)
    return vpqt.gather(-3, select)


def adjust_hue(img: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``f`` turns; uint8 <-> float conversions as torchvision's ``to_dtype``
    (``*(1/255)``, then ``*(255 + 1 - 1e-3)`` truncated)."""
    hsv = _rgb_to_hsv(img.to(torch.float32).mul_(1.0 / 255))
    hsv[:, 0].add_(_factor(f, img).view(-1, 1, 1)).remainder_(1.0)
    return _hsv_to_rgb(hsv).mul_(255.0 + 1.0 - 1e-3).to(torch.uint8)


ADJUST = {BRIGHTNESS: adjust_brightness, CONTRAST: adjust_contrast, SATURATION: adjust_saturation, HUE: adjust_hue}


def jitter_params(factors: torch.Tensor, order: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """(B,4) factors (NaN: not applied) and (B,4) order -> one (B,8) float64 tensor on ``device``
    (factors, then order), moved in one asynchronous copy: from pinned memory on CUDA, since a
    copy from pageable memory waits for the device's stream first."""
    params = torch.cat([factors.to(torch.float64), order.to(torch.float64)], dim=1)
    if torch.device(device).type == "cuda" and not params.is_cuda:
        params = params.pin_memory()
    return params.to(device, non_blocking=True)


_NEUTRAL = (1.0, 1.0, 1.0, 0.0)
"""A factor that leaves the image as it is, per operation (brightness, contrast, saturation, hue)."""


def color_jitter_device(rgb: torch.Tensor, params: torch.Tensor, select: bool | None = None) -> torch.Tensor:
    """Per-sample ColorJitter of a uint8 (B,3,H,W) batch with :func:`jitter_params`' tensor: at
    step k sample i gets operation ``order[i, k]`` with factor ``factors[i, op]`` (NaN: skipped).
    Each step runs every operation on the whole batch and keeps per sample the one it draws
    (``torch.where``): fixed shapes and no host decision, so it compiles to a few kernels.

    ``select`` (None: on the CPU, eagerly): each operation runs only on the samples that draw it,
    picked by index. Every operation is per sample, so the values are the same; on the CPU there is
    no device to wait for, and running all four on every sample costs about four times as much."""
    if select is None:
        select = rgb.device.type == "cpu" and not torch.compiler.is_compiling()
    factors, order = params[:, :4], params[:, 4:].to(torch.int64)
    applied = ~torch.isnan(factors)
    factors = torch.where(applied, factors, torch.tensor(_NEUTRAL, dtype=factors.dtype, device=factors.device))
    x = rgb
    for step in range(order.shape[1]):
        op = order[:, step:step + 1]
        f = factors.gather(1, op).view(-1)
        on = applied.gather(1, op).view(-1)
        y = x.clone() if select else x
        for k, fn in ADJUST.items():
            pick = (op.view(-1) == k) & on
            if select:
                i = pick.nonzero().view(-1)
                if len(i):
                    y[i] = fn(x[i], f[i])
            else:
                y = torch.where(pick.view(-1, 1, 1, 1), fn(x, f), y)
        x = y
    return x


def color_jitter_batch(rgb: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """:func:`color_jitter_device` with the loader's (B,4) ``jitter`` and ``jitter_order`` fields."""
    return color_jitter_device(rgb, jitter_params(factors, order, rgb.device))


# ---------------------------------------------------------------- JPEG decode on the device

def decode_jpeg_batch(jpegs: Sequence[torch.Tensor], crop: torch.Tensor, flip: torch.Tensor, size: tuple[int, int],
                      device: torch.device) -> torch.Tensor:
    """Decode (``torchvision.io.decode_jpeg`` on ``device``), crop to each sample's box, resize
    (bilinear, antialiased when shrinking, like the CPU path's area/linear choice) and flip:
    uint8 (B,3,H,W) channels-last."""
    with warnings.catch_warnings():  # torchvision 0.29 announces a move of its decoders to TorchCodec
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg
        from torchvision.transforms.v2.functional import horizontal_flip, resized_crop

        imgs = decode_jpeg(list(jpegs), mode=ImageReadMode.RGB, device=device)
    out = torch.empty((len(imgs), 3, *size), dtype=torch.uint8, device=device).contiguous(memory_format=torch.channels_last)
    for i, (img, box, fl) in enumerate(zip(imgs, crop.tolist(), flip.tolist())):
        y0, x0, ch, cw = box
        r = resized_crop(img, y0, x0, ch, cw, list(size), antialias=True)
        out[i] = horizontal_flip(r) if fl else r
    return out
