"""The streaming training loader: mixture plan -> rank/worker split -> read, decode, augment, batch.

How an epoch is split (everything below is a pure function of seed, epoch, rank, world size):

* The epoch plan (:mod:`vortex_data.mixture`) is one ordered list of samples, identical on all
  ranks. Global step ``j`` takes plan positions ``[j*W*B, (j+1)*W*B)``; rank ``r`` gets the
  ``r``-th slice of ``B``. Every rank therefore has exactly the same number of batches
  (``floor(N / (W*B))`` for training, which drops the tail; evaluation pads by wrapping around
  and marks padding in ``is_pad``), whatever the shard counts: no DDP hang.
* DataLoader worker ``w`` of ``K`` produces the rank's batches ``start + w, start + w + K, ...``;
  the DataLoader hands batches out round-robin by worker, so the output order is the batch order
  for any ``K`` (more workers than shards is fine: work is split by batch, not by shard).
* A worker reads a window of ``window_batches`` batches at a time: the window's samples are
  grouped by shard and read in file order (one open per shard per worker, kept open), then
  decoded, augmented and collated batch by batch in plan order.

Memory bound per worker: ``window_batches * B`` encoded samples (the read window) plus one
decoded batch; the DataLoader queues at most ``prefetch_factor * K`` collated batches.

Resume: ``state_dict()`` records (epoch, batches delivered). ``load_state_dict`` makes the next
iteration start at that batch of that epoch; since plan and augmentation depend only on
(seed, epoch, key, repeat), the continued run sees exactly the samples and augmentations the
uninterrupted run would have.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .augment import AugmentConfig, apply_geometry, color_jitter, draw_eval, draw_train, intrinsics_of, jpeg_reduction
from .mixture import (EpochPlan, Mixture, SourceIndex, plan_epoch, plan_sequential, read_source_index,
                      resolve_mixture)
from .photometric import finish_batch
from .schema import DEPTH_SCALE_MM, IGNORE_INDEX, SchemaError, decode_sample, read_meta, rgb_bytes
from .shard_reader import ShardReader

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STATE_VERSION = 1


# ---------------------------------------------------------------- pure splitting functions

def batches_per_rank(n_samples: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """Batches each rank yields for an epoch of ``n_samples`` (same on every rank)."""
    step = batch_size * world_size
    return n_samples // step if drop_last else -(-n_samples // step)


def batch_positions(j: int, rank: int, world_size: int, batch_size: int, n_samples: int) -> np.ndarray:
    """Plan positions of rank ``rank``'s batch ``j``; positions past the end wrap around (padding)."""
    start = (j * world_size + rank) * batch_size
    return np.arange(start, start + batch_size) % n_samples


def worker_batches(start: int, total: int, worker: int, num_workers: int) -> range:
    """The batches worker ``worker`` of ``num_workers`` produces, from batch ``start`` on."""
    return range(start + worker, total, max(1, num_workers))


# ---------------------------------------------------------------- the per-epoch dataset

@dataclass(frozen=True)
class LoaderSpec:
    """Everything a worker needs, picklable."""

    indices: tuple[SourceIndex, ...]
    weights: tuple[float, ...]
    epoch_size: int
    train: bool
    augmenting: bool
    augment: AugmentConfig
    batch_size: int
    seed: int
    rank: int
    world_size: int
    drop_last: bool
    trim_pad: bool
    window_batches: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    cache_dir: str | None
    profile: bool
    photometric: str = "cpu"
    decode: str = "cpu"

    def plan(self, epoch: int) -> EpochPlan:
        sizes = [len(ix) for ix in self.indices]
        if self.train:
            return plan_epoch(sizes, self.weights, self.epoch_size, self.seed, epoch)
        return plan_sequential(sizes)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Make glibc's allocator keep freed memory for reuse instead of returning it to the OS.

    Decoding and augmenting allocate and free several MB per sample; by default blocks that big
    are fresh ``mmap``s, so every sample pays page faults on all of them (the same colour jitter
    runs in about half the CPU time once the memory is reused). Called in DataLoader workers
    (and by ``bench-loader``); RSS then stays at its high-water mark, flat across epochs.
    Returns False where there is no glibc ``mallopt``.
    """
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


class EpochDataset(IterableDataset):
    """A rank's batches from batch ``start`` of ``epoch`` on, split over DataLoader workers.

    Each ``iter()`` runs one epoch and then moves its own copy on to the start of the next, so
    the same object (in-process) or the same persistent DataLoader workers (each holding a copy)
    serve epoch after epoch while keeping their shard reader, i.e. their open shard handles and
    parsed tar tables. :class:`StreamLoader` rebuilds the dataset whenever the position it wants
    is not the one the copies will produce next (resume, ``set_epoch``, an abandoned epoch).
    """

    def __init__(self, spec: LoaderSpec, epoch: int, start: int):
        self.spec, self.epoch, self.start = spec, epoch, start
        self.reader = ShardReader(spec.cache_dir)
        self.worker = 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, start = self.epoch, self.start
        self.epoch, self.start = epoch + 1, 0
        return self._epoch(epoch, start)

    def _epoch(self, epoch: int, start: int) -> Iterator[dict[str, Any]]:
        s = self.spec
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            keep_freed_memory()  # this worker process's allocator (the main process's is the user's)
        self.worker = wid
        opens0 = self.reader.opens
        plan = s.plan(epoch)
        total = batches_per_rank(len(plan), s.batch_size, s.world_size, s.drop_last)
        mine = list(worker_batches(start, total, wid, nw))
        for w0 in range(0, len(mine), s.window_batches):
            window = mine[w0:w0 + s.window_batches]
            pos = [batch_positions(j, s.rank, s.world_size, s.batch_size, len(plan)) for j in window]
            t0 = time.perf_counter()
            raw = self._read(plan, np.concatenate(pos))
            t_read = (time.perf_counter() - t0) / len(window)
            for j, p in zip(window, pos):
                first = (j * s.world_size + s.rank) * s.batch_size
                yield self._batch(plan, epoch, p, raw, len(plan), t_read, first, self.reader.opens - opens0)

    def _read(self, plan: EpochPlan, positions: np.ndarray) -> dict[tuple[int, int], dict[str, bytes]]:
        """Encoded members of the given plan positions, read grouped by shard in file order."""
        groups: dict[tuple[int, int], list[str]] = {}
        for p in positions:
            src, idx = int(plan.source[p]), int(plan.index[p])
            ix = self.spec.indices[src]
            groups.setdefault((src, int(ix.shard_of[idx])), []).append(ix.keys[idx])
        raw: dict[tuple[int, int], dict[str, bytes]] = {}
        for (src, shard), keys in sorted(groups.items()):
            got = self.reader.read_group(self.spec.indices[src].shards[shard], keys)
            for key, members in got.items():
                raw[(src, key)] = members  # type: ignore[index]
        return raw

    def _batch(self, plan: EpochPlan, epoch: int, positions: np.ndarray, raw: dict, n: int, t_read: float,
               first: int, opens: int) -> dict[str, Any]:
        s = self.spec
        samples = []
        for p in positions:
            src, idx = int(plan.source[p]), int(plan.index[p])
            key = s.indices[src].keys[idx]
            samples.append(RawSample(key, raw[(src, key)], src, int(plan.repeat[p])))
        timing: dict[str, float] = {}
        batch = build_batch(samples, s.augment, s.augmenting, s.seed, epoch, photometric=s.photometric,
                            decode=s.decode, mean=s.mean, std=s.std, timing=timing)
        # batch_positions wraps with modulo, so padding is where the unwrapped position passes n.
        batch["is_pad"] = torch.from_numpy((first + np.arange(len(positions))) >= n)
        if s.trim_pad and bool(batch["is_pad"].any()):
            batch = trim(batch, ~batch["is_pad"])
        if s.profile:
            batch["timing"] = {"read": t_read, **timing, "opens": opens, "worker": self.worker}
        return batch


# ---------------------------------------------------------------- building a batch (the CPU phase)

PHOTOMETRIC = ("cpu", "device")
DECODE = ("cpu", "device")


@dataclass(frozen=True)
class RawSample:
    """One encoded sample as read from its shard, with where it came from in the plan."""

    key: str
    members: Mapping[str, bytes]
    source: int = 0
    repeat: int = 0


_LUTS: dict[tuple, np.ndarray] = {}


def rgb_lut(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(1, 256) 3-channel float32 table: ``(v/255 - mean[c]) / std[c]`` for every uint8 ``v``."""
    k = (tuple(mean), tuple(std))
    if k not in _LUTS:
        v = np.arange(256, dtype=np.float64)[:, None] / 255.0
        _LUTS[k] = ((v - np.asarray(mean)) / np.asarray(std)).astype(np.float32).reshape(1, 256, 3)
    return _LUTS[k]


def build_batch(samples: Sequence[RawSample], cfg: AugmentConfig, augmenting: bool, seed: int, epoch: int, *,
                photometric: str = "cpu", decode: str = "cpu", mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD, timing: dict[str, float] | None = None) -> dict[str, Any]:
    """Encoded samples -> one batch (fields: see :func:`make_loader`), the workers' whole job.

    Per sample: the metadata, then the augmentation draws (they fix the crop box before
    anything is decoded, so the JPEG can be decoded DCT-reduced when the box is >= 2x the
    output), then decode and the geometry of every map written straight into the batch arrays
    (no per-sample intermediates, nothing touches every input pixel except the decoders). uint8
    RGB, uint16 depth and uint8 labels are what crosses the worker boundary for
    ``photometric="device"``; ``"cpu"`` finishes here (colour jitter per sample with OpenCV, one
    table pass uint8 -> normalised float) with OpenCV/numpy, which stay on one thread, rather
    than torch ops whose intra-op threads would fight the DataLoader workers for cores.
    ``timing``: filled with decode / augment / collate seconds for the batch.
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
        meta = read_meta(smp.members, smp.key)
        h, w = int(meta["height"]), int(meta["width"])
        draw = (draw_train(smp.key, h, w, cfg, seed, epoch, smp.repeat) if augmenting else draw_eval(h, w, cfg))
        if decode == "device":
            data = rgb_bytes(smp.members, smp.key)
            if "rgb.jpg" not in smp.members:
                raise SchemaError(f"sample {smp.key!r}: decode='device' needs JPEG RGB, the shard stores "
                                  f"{[e for e in smp.members if e.startswith('rgb.')]}")
            jpegs.append(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        reduce = jpeg_reduction(draw.box, cfg.size) if rgb is not None and "rgb.jpg" in smp.members else 1
        d = decode_sample(smp.members, smp.key, with_rgb=rgb is not None, rgb_reduce=reduce, fill_seg=False,
                          meta=meta)
        d["intrinsics"] = intrinsics_of(meta)
        t1 = time.perf_counter()
        if d["seg"] is None:
            seg[i] = IGNORE_INDEX
        out = {"depth_mm": depth[i, 0], "seg": seg[i]}
        if rgb is not None:
            out["rgb"] = rgb[i]
        k = apply_geometry(d, draw, cfg.size, out, reduce)["intrinsics"]
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
    batch: dict[str, Any] = {
        "has_seg": torch.tensor(has_seg),
        "dataset": torch.tensor([smp.source for smp in samples], dtype=torch.int64),
        "key": [smp.key for smp in samples],
        "intrinsics": torch.tensor(intrinsics, dtype=torch.float32),
        "seg": torch.from_numpy(seg),
    }
    t_jit = 0.0
    if photometric == "cpu":
        lut = rgb_lut(mean, std)
        rgbf = np.empty((b, oh, ow, 3), np.float32)
        for i, j in enumerate(jitters):
            t1 = time.perf_counter()
            x = color_jitter(rgb[i], j) if j is not None else rgb[i]
            t_jit += time.perf_counter() - t1
            cv2.LUT(x, lut, dst=rgbf[i])  # uint8 -> normalised float, one pass
        batch["rgb"] = torch.from_numpy(rgbf).permute(0, 3, 1, 2)  # channels-last memory
        batch["depth"] = torch.from_numpy(np.multiply(depth, np.float32(1.0 / DEPTH_SCALE_MM), dtype=np.float32))
    else:
        batch["depth"] = torch.from_numpy(depth)
        batch["jitter"] = torch.from_numpy(factors)
        batch["jitter_order"] = torch.from_numpy(order.astype(np.int64))
        if rgb is not None:
            batch["rgb"] = torch.from_numpy(rgb).permute(0, 3, 1, 2)
        else:
            batch["jpeg"] = jpegs
            batch["crop"] = torch.tensor(boxes, dtype=torch.int64)
            batch["flip"] = torch.tensor(flips)
    if timing is not None:
        timing.update(decode=t_dec, augment=t_aug + t_jit, collate=time.perf_counter() - t0 - t_jit)
    return batch


def trim(batch: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """The batch restricted to the samples where ``keep`` is true."""
    idx = keep.nonzero().flatten().tolist()
    return {k: ([v[i] for i in idx] if isinstance(v, list) else v[keep] if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()}


# ---------------------------------------------------------------- the resumable loader

class StreamLoader:
    """Iterable of batches with a ``state_dict``/``load_state_dict`` resume contract.

    Each ``iter()`` runs the rest of the current epoch and then advances the epoch. The state
    counts batches *delivered to the caller*, so a checkpoint taken after consuming k batches
    resumes at batch k (batches prefetched by workers but not consumed are produced again).
    """

    def __init__(self, spec: LoaderSpec, source_names: Sequence[str], num_workers: int = 0,
                 prefetch_factor: int = 2, fingerprint: str = ""):
        self.spec = spec
        self.source_names = list(source_names)
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.fingerprint = fingerprint
        self.epoch = 0
        self.batch = 0
        self._dl: DataLoader | None = None
        self._next: tuple[int, int] | None = None

    def __len__(self) -> int:
        n = len(self.spec.plan(self.epoch))
        return batches_per_rank(n, self.spec.batch_size, self.spec.world_size, self.spec.drop_last)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.batch = int(epoch), 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._dl is None or self._next != (self.epoch, self.batch):
            # Workers (and their open shards) persist across epochs; a jump elsewhere restarts them.
            self._dl = None
            ds = EpochDataset(self.spec, self.epoch, self.batch)
            kw: dict[str, Any] = ({"prefetch_factor": self.prefetch_factor, "persistent_workers": True}
                                  if self.num_workers else {})
            # Pinned host memory makes the trainer's .to(device, non_blocking=True) truly asynchronous.
            self._dl = DataLoader(ds, batch_size=None, num_workers=self.num_workers,
                                  pin_memory=torch.cuda.is_available(), **kw)
        self._next = (self.epoch + 1, 0)  # where the dataset copies stand once this iter() starts
        for b in self._dl:
            if self.spec.photometric == "cpu":
                b["seg"] = b["seg"].long()  # uint8 across the worker boundary; finish() widens on the device
            self.batch += 1
            yield b
        self.epoch, self.batch = self.epoch + 1, 0

    def finish(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The device phase: a batch (moved with :func:`vortex_data.photometric.to_device` or
        ``.to(device, non_blocking=True)`` per tensor) -> the finished float batch, on its device.
        The identity for ``photometric="cpu"`` batches, so training code can always call it."""
        return finish_batch(batch, self.spec.mean, self.spec.std)

    def close(self) -> None:
        """Stop persistent workers now (otherwise they stop when the loader is garbage-collected)."""
        self._dl = None

    def state_dict(self) -> dict[str, Any]:
        s = self.spec
        return {"version": STATE_VERSION, "epoch": self.epoch, "batch": self.batch, "seed": s.seed,
                "rank": s.rank, "world_size": s.world_size, "batch_size": s.batch_size,
                "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``. Refuses a state from a different seed, world size, batch
        size or mixture, where 'the same samples' would have no meaning."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"loader state version {state.get('version')} != {STATE_VERSION}")
        mine = self.state_dict()
        for k in ("seed", "world_size", "batch_size", "fingerprint", "rank"):
            if state.get(k) != mine[k]:
                raise ValueError(f"loader state has {k}={state.get(k)!r}, this loader has {mine[k]!r}")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


AUGMENT_ON = ("default", "v5", "train", "on", "true")
AUGMENT_OFF = ("none", "off", "eval", "false")


def augment_choice(augment: bool | str | AugmentConfig | None, training: bool) -> AugmentConfig | None:
    """None -> V5 when training; a name -> on/off; an AugmentConfig as given. None result = the
    deterministic evaluation transform."""
    if isinstance(augment, AugmentConfig):
        return augment
    if augment is None:
        return AugmentConfig() if training else None
    if isinstance(augment, str):
        if augment.lower() in AUGMENT_ON:
            return AugmentConfig()
        if augment.lower() in AUGMENT_OFF:
            return None
        raise ValueError(f"augment must be one of {AUGMENT_ON + AUGMENT_OFF}, got {augment!r}")
    return AugmentConfig() if augment else None


def make_loader(mixture: Mixture | str | None = None, split: str = "train", batch_size: int = 8,
                augment: bool | str | AugmentConfig | None = None, num_workers: int = 0, seed: int = 0,
                rank: int = 0, world_size: int = 1, *, manifest: str | None = None,
                training: bool | None = None, image_size: Sequence[int] | None = None,
                size: Sequence[int] | None = None, manifests_dir: str | None = None,
                cache_dir: str | None = None, window_batches: int = 4, drop_last: bool | None = None,
                prefetch_factor: int = 2, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD, profile: bool = False, photometric: str = "cpu",
                decode: str = "cpu") -> StreamLoader:
    """Build the loader for ``split`` of a mixture (a Mixture, a TOML/JSON file, or a recipe
    name such as ``stage1``) or of a single ``manifest``.

    Batches: ``rgb`` float (B,3,H,W) normalised by mean/std; ``depth`` float metres (B,1,H,W),
    0 = invalid; ``seg`` int64 (B,H,W), 255 = ignore; ``has_seg`` bool (B,); ``dataset`` int64
    (B,) index into ``loader.source_names``; ``key`` list of str; ``intrinsics`` float (B,4)
    fx, fy, cx, cy at the output size; ``is_pad`` bool (B,).

    training (default: split == 'train'): the mixture plan (weights, epoch size, reshuffled per
    epoch, tail dropped so all ranks have equal batches). Otherwise one ordered pass over every
    sample; with several ranks the last step is padded (``is_pad``) to keep batch counts equal,
    with one rank the padding is trimmed. augment: None = V5 when training, else the
    deterministic resize/centre crop; also 'default'/'v5'/'none', a bool or an AugmentConfig.
    image_size / size: (H, W) output size (overrides the AugmentConfig's).

    photometric: ``"cpu"`` (default): the workers finish the batch (the fields above).
    ``"device"``: the workers do only decode and geometry and ship compact raw batches,
    ``rgb`` uint8 (B,3,H,W) channels-last, ``depth`` uint16 mm (B,1,H,W), ``seg`` uint8, plus
    ``jitter`` float64 (B,4) (brightness, contrast, saturation, hue factors; NaN = not applied)
    and ``jitter_order`` int64 (B,4); ``loader.finish(batch)`` turns it into the fields above on
    the batch's device (move it first with ``vortex_data.photometric.to_device``).
    decode: ``"device"`` (needs photometric="device", JPEG RGB and torchvision): the workers ship
    ``jpeg`` (list of uint8 tensors), ``crop`` int64 (B,4) boxes y0, x0, h, w and ``flip`` bool
    (B,) instead of ``rgb``; ``finish`` decodes with ``torchvision.io.decode_jpeg`` on the
    batch's device and does the RGB crop/resize/flip there.
    """
    if photometric not in PHOTOMETRIC:
        raise ValueError(f"photometric must be one of {PHOTOMETRIC}, got {photometric!r}")
    if decode not in DECODE:
        raise ValueError(f"decode must be one of {DECODE}, got {decode!r}")
    if decode == "device" and photometric != "device":
        raise ValueError("decode='device' ships undecoded RGB, so it needs photometric='device'")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    train = split == "train" if training is None else bool(training)
    cfg = augment_choice(augment, train)
    out_size = size if size is not None else image_size
    base = cfg or AugmentConfig()
    if out_size is not None:
        base = AugmentConfig(**{**base.__dict__, "size": (int(out_size[0]), int(out_size[1]))})
    mix = resolve_mixture(mixture, manifest, manifests_dir)
    indices = tuple(read_source_index(mix.manifest_path(s, split), s.name, s.key_pattern) for s in mix.sources)
    spec = LoaderSpec(
        indices=indices, weights=tuple(s.weight for s in mix.sources), epoch_size=mix.epoch_size,
        train=train, augmenting=cfg is not None, augment=base, batch_size=batch_size, seed=seed, rank=rank,
        world_size=world_size, drop_last=train if drop_last is None else drop_last,
        trim_pad=world_size == 1, window_batches=max(1, window_batches), mean=tuple(mean), std=tuple(std),
        cache_dir=cache_dir, profile=profile, photometric=photometric, decode=decode,
    )
    fingerprint = f"{mix.name}:{mix.epoch_size}:" + ",".join(
        f"{s.name}={s.weight}:{len(ix)}" for s, ix in zip(mix.sources, indices))
    return StreamLoader(spec, [s.name for s in mix.sources], num_workers, prefetch_factor, fingerprint)
