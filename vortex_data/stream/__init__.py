"""The streaming training loader: mixture plan -> rank/worker split -> read, decode, augment, batch.

How an epoch is split (everything below is a pure function of seed, epoch, rank, world size):

* The epoch plan (:mod:`vortex_data.mixture`) is one ordered list of samples, identical on all
  ranks. A pass over the epoch starts at plan position ``s`` (0, or where a resumed run left
  off); global step ``j`` takes plan positions ``s + [j*W*B, (j+1)*W*B)``; rank ``r`` gets the
  ``r``-th slice of ``B``. Every rank therefore has exactly the same number of batches
  (``floor((N - s) / (W*B))`` for training, which drops the tail; evaluation pads by wrapping
  around and marks padding in ``is_pad``), whatever the shard counts: no DDP hang.
* DataLoader worker ``w`` of ``K`` produces the rank's batches ``w, w + K, w + 2K, ...`` of the pass;
  the DataLoader hands batches out round-robin by worker, so the output order is the batch order
  for any ``K`` (more workers than shards is fine: work is split by batch, not by shard).
* A worker reads a window of ``window_batches`` batches at a time: the window's samples are
  grouped by shard and read in file order (one open per shard per worker, kept open), then
  decoded, augmented and collated batch by batch in plan order.

Memory bound per worker: ``window_batches * B`` encoded samples (the read window) plus one
decoded batch; the DataLoader queues at most ``prefetch_factor * K`` collated batches.

Resume (elastic, MosaicML-Streaming style): ``state_dict()`` records the *global* position in
the epoch plan, ``samples`` = plan positions consumed by all ranks together (``s`` plus ``W*B``
per batch delivered). ``load_state_dict`` accepts it at any world size, batch size or worker
count: the next pass starts at that position, so the union of what the ranks yield next is
exactly the rest of the epoch, each sample once. Rounding: the last fewer-than-``W*B`` samples
of the epoch are dropped in training (the same rule as every epoch's tail, now counted from
``s``), padded by wrap-around with evaluation settings. Since plan and augmentation depend
only on (seed, epoch, key, repeat), resumed samples are identical to the uninterrupted run's.
"""

from __future__ import annotations

import atexit
import logging
import signal
import time
import weakref
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .augment import AugmentConfig, apply_geometry, color_jitter, draw_eval, draw_train, intrinsics_of, jpeg_reduction
from .integrity import SampleError, check_members, check_policy
from .mixture import (EpochPlan, Mixture, SourceIndex, plan_epoch, plan_sequential, read_source_index,
                      resolve_mixture, rng_for)
from .photometric import finish_batch
from .schema import DEPTH_SCALE_MM, IGNORE_INDEX, SchemaError, decode_sample, read_meta, rgb_bytes
from .shard_cache import node_cache_dir
from .shard_reader import ShardReader, is_remote

log = logging.getLogger(__name__)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STATE_VERSION = 2


# ---------------------------------------------------------------- pure splitting functions

def batches_per_rank(n_samples: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """Batches each rank yields for ``n_samples`` plan positions (same on every rank)."""
    step = batch_size * world_size
    return n_samples // step if drop_last else -(-n_samples // step)


def batch_first(j: int, rank: int, world_size: int, batch_size: int, offset: int = 0) -> int:
    """Plan position of the first sample of rank ``rank``'s batch ``j`` of a pass starting at ``offset``."""
    return offset + (j * world_size + rank) * batch_size


def batch_positions(j: int, rank: int, world_size: int, batch_size: int, n_samples: int,
                    offset: int = 0) -> np.ndarray:
    """Plan positions of rank ``rank``'s batch ``j``; positions past the end wrap around (padding)."""
    start = batch_first(j, rank, world_size, batch_size, offset)
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
    on_error: str = "raise"
    """A sample failing its checksum or decode: 'raise', or 'skip' (replace it, count it, log it)."""
    cache_bytes: int | None = None
    """Size limit of the remote-shard cache (None: $VORTEX_SHARD_CACHE_BYTES or half the free space)."""
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
    """A rank's batches of ``epoch`` from global plan position ``offset`` on, split over DataLoader workers.

    Each ``iter()`` runs one epoch and then moves its own copy on to the start of the next, so
    the same object (in-process) or the same persistent DataLoader workers (each holding a copy)
    serve epoch after epoch while keeping their shard reader, i.e. their open shard handles and
    parsed tar tables. :class:`StreamLoader` rebuilds the dataset whenever the position it wants
    is not the one the copies will produce next (resume, ``set_epoch``, an abandoned epoch).
    """

    def __init__(self, spec: LoaderSpec, epoch: int, offset: int):
        self.spec, self.epoch, self.offset = spec, epoch, offset
        self.reader = ShardReader(spec.cache_dir, cache_bytes=spec.cache_bytes)
        self.worker = 0
        self._skipped: list[str] = []

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, offset = self.epoch, self.offset
        self.epoch, self.offset = epoch + 1, 0
        return self._epoch(epoch, offset)

    def _epoch(self, epoch: int, offset: int) -> Iterator[dict[str, Any]]:
        s = self.spec
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        if info is not None:
            keep_freed_memory()  # this worker process's allocator (the main process's is the user's)
        self.worker = wid
        opens0 = self.reader.opens
        plan = s.plan(epoch)
        total = batches_per_rank(len(plan) - offset, s.batch_size, s.world_size, s.drop_last)
        mine = list(worker_batches(0, total, wid, nw))
        for w0 in range(0, len(mine), s.window_batches):
            window = mine[w0:w0 + s.window_batches]
            pos = [batch_positions(j, s.rank, s.world_size, s.batch_size, len(plan), offset) for j in window]
            t0 = time.perf_counter()
            raw = self._read(plan, np.concatenate(pos))
            t_read = (time.perf_counter() - t0) / len(window)
            for j, p in zip(window, pos):
                first = batch_first(j, s.rank, s.world_size, s.batch_size, offset)
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
            samples.append(self._checked_raw(plan, epoch, int(p), raw))
        timing: dict[str, float] = {}
        tries = [0] * len(samples)
        while True:
            try:
                batch = build_batch(samples, s.augment, s.augmenting, s.seed, epoch, photometric=s.photometric,
                                    decode=s.decode, mean=s.mean, std=s.std, timing=timing)
                break
            except SampleError as e:  # members that pass their checksums (or have none) but do not decode
                if s.on_error != "skip":
                    raise
                i = next(i for i, smp in enumerate(samples) if smp.key == e.key and smp.shard == e.shard)
                tries[i] += 1
                if tries[i] > MAX_REPLACEMENT_TRIES:
                    raise SampleError(f"{e} (and {MAX_REPLACEMENT_TRIES} replacements from the same source "
                                      "did not decode either)") from None
                samples[i] = self._replacement(plan, epoch, int(positions[i]), e, tries[i])
        # batch_positions wraps with modulo, so padding is where the unwrapped position passes n.
        batch["is_pad"] = torch.from_numpy((first + np.arange(len(positions))) >= n)
        if s.trim_pad and bool(batch["is_pad"].any()):
            batch = trim(batch, ~batch["is_pad"])
        if s.profile:
            batch["timing"] = {"read": t_read, **timing, "opens": opens, "worker": self.worker}
        if self._skipped:
            batch["skipped"], self._skipped = self._skipped, []
        return batch

    # -- read-time integrity hook (one sample's members in, checked members out)
    def _checked_raw(self, plan: EpochPlan, epoch: int, p: int, raw: dict) -> "RawSample":
        """The encoded sample at plan position ``p``, checked against the index's member checksums.

        A bad sample raises SampleError (shard, key, member) with ``on_error='raise'``; with
        'skip' it is replaced (:meth:`_replacement`). Decoding happens later, in
        :func:`build_batch`, whose SampleError :meth:`_batch` handles the same way.
        """
        src, idx = int(plan.source[p]), int(plan.index[p])
        ix = self.spec.indices[src]
        key = ix.keys[idx]
        try:
            return _checked(ix, idx, raw[(src, key)], int(plan.repeat[p]), src)
        except SampleError as e:
            if self.spec.on_error != "skip":
                raise
            return self._replacement(plan, epoch, p, e, 1)

    def _replacement(self, plan: EpochPlan, epoch: int, p: int, bad: SampleError, n: int) -> "RawSample":
        """A stand-in for the bad sample at plan position ``p`` (its ``n``-th): a sample of the same
        source drawn from (seed, epoch, position, attempt) only, so every rerun and every resume
        makes the same replacement."""
        src, idx = int(plan.source[p]), int(plan.index[p])
        ix = self.spec.indices[src]
        for attempt in range((n - 1) * MAX_REPLACEMENT_TRIES, n * MAX_REPLACEMENT_TRIES):
            alt = int(rng_for(self.spec.seed, "replace", epoch, int(p), attempt).integers(len(ix)))
            if alt == idx:
                continue
            key = ix.keys[alt]
            try:
                members = self.reader.read_group(ix.shards[int(ix.shard_of[alt])], [key])[key]
                smp = _checked(ix, alt, members, int(plan.repeat[p]), src)
            except SampleError:
                continue
            self._skipped.append(f"{bad}; replaced by {key!r}")
            return smp
        raise SampleError(f"{bad} (and {MAX_REPLACEMENT_TRIES} replacement draws from the same source failed too)")


MAX_REPLACEMENT_TRIES = 8


def _checked(ix: SourceIndex, i: int, members: dict[str, bytes], repeat: int, src: int) -> "RawSample":
    """Sample ``i`` of ``ix`` with its members checked against the index's checksums (when it has them)."""
    key, url = ix.keys[i], ix.shards[int(ix.shard_of[i])]
    if ix.checksums is not None and ix.checksums[i] is not None:
        check_members(url, key, members, ix.checksums[i])
    return RawSample(key, members, src, repeat, url)


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
    shard: str = ""


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
        if decode == "device" and "rgb.jpg" not in smp.members:  # a setting that does not fit the data
            raise SchemaError(f"sample {smp.key!r}: decode='device' needs JPEG RGB, the shard stores "
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
        except (SchemaError, KeyError, ValueError) as e:  # names the shard, so the bad sample can be found
            raise SampleError(smp.shard, smp.key, None, str(e).removeprefix(f"sample {smp.key!r}: ")) from None
        d["intrinsics"] = intrinsics_of(meta)
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
    resumes right after them (batches prefetched by workers but not consumed are produced
    again). ``position`` is the global plan position reached: all ranks step together, so each
    delivered batch stands for ``world_size * batch_size`` plan positions.
    """

    def __init__(self, spec: LoaderSpec, source_names: Sequence[str], num_workers: int = 0,
                 prefetch_factor: int = 2, fingerprint: str = ""):
        self.spec = spec
        self.source_names = list(source_names)
        self.num_workers = num_workers
        self.prefetch_factor = prefetch_factor
        self.fingerprint = fingerprint
        self.epoch = 0
        self.position = 0
        self.skipped: list[str] = []
        """Every sample replaced under on_error='skip' so far: shard, key, member, reason, replacement."""
        self._dl: DataLoader | None = None
        self._next: tuple[int, int] | None = None

    def __len__(self) -> int:
        """Batches per rank in a whole epoch (a resumed pass yields fewer)."""
        n = len(self.spec.plan(self.epoch))
        return batches_per_rank(n, self.spec.batch_size, self.spec.world_size, self.spec.drop_last)

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.position = int(epoch), 0

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._dl is None or self._next != (self.epoch, self.position):
            # Workers (and their open shards) persist across epochs; a jump elsewhere restarts them.
            self._dl = None
            ds = EpochDataset(self.spec, self.epoch, self.position)
            kw: dict[str, Any] = ({"prefetch_factor": self.prefetch_factor, "persistent_workers": True,
                                   "worker_init_fn": ignore_stop_signals} if self.num_workers else {})
            # Pinned host memory makes the trainer's .to(device, non_blocking=True) truly asynchronous.
            self._dl = DataLoader(ds, batch_size=None, num_workers=self.num_workers,
                                  pin_memory=torch.cuda.is_available(), **kw)
            if self.num_workers:
                _LIVE.add(self)
        self._next = (self.epoch + 1, 0)  # where the dataset copies stand once this iter() starts
        n = len(self.spec.plan(self.epoch))
        step = self.spec.world_size * self.spec.batch_size
        skipped0 = len(self.skipped)
        for b in self._dl:
            if self.spec.photometric == "cpu":
                b["seg"] = b["seg"].long()  # uint8 across the worker boundary; finish() widens on the device
            for msg in b.pop("skipped", ()):
                log.warning("bad sample skipped: %s", msg)
                self.skipped.append(msg)
            self.position = min(n, self.position + step)  # an evaluation pass's padded last step ends at n
            yield b
        if len(self.skipped) > skipped0:
            log.warning("epoch %d: %d bad samples replaced (on_error='skip'); %d in total",
                        self.epoch, len(self.skipped) - skipped0, len(self.skipped))
        self.epoch, self.position = self.epoch + 1, 0

    def finish(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The device phase: a batch (moved with :func:`vortex_data.photometric.to_device` or
        ``.to(device, non_blocking=True)`` per tensor) -> the finished float batch, on its device.
        The identity for ``photometric="cpu"`` batches, so training code can always call it."""
        return finish_batch(batch, self.spec.mean, self.spec.std)

    def close(self) -> None:
        """Stop persistent workers now (otherwise they stop when the loader is garbage-collected,
        or at interpreter exit)."""
        dl, self._dl = self._dl, None
        it = getattr(dl, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()  # the graceful stop: workers leave their loop and exit

    def state_dict(self) -> dict[str, Any]:
        """``samples``: global plan positions of ``epoch`` consumed; ``epoch_samples``: the plan's
        length. world_size / batch_size are recorded for messages only: any may resume it."""
        s = self.spec
        return {"version": STATE_VERSION, "epoch": self.epoch, "samples": self.position,
                "epoch_samples": len(s.plan(self.epoch)), "seed": s.seed, "fingerprint": self.fingerprint,
                "world_size": s.world_size, "batch_size": s.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``, saved at any world size, batch size or worker count. Refuses a
        state from a different seed or mixture, where 'the same samples' would have no meaning.
        A version-1 state (epoch, batches per rank) is converted: batches x world size x batch size."""
        version = state.get("version")
        if version == 1:
            state = {**state, "samples": int(state["batch"]) * int(state["world_size"]) * int(state["batch_size"])}
        elif version != STATE_VERSION:
            raise ValueError(f"loader state version {version!r} is not one this loader reads (1, {STATE_VERSION})")
        for k, mine in (("seed", self.spec.seed), ("fingerprint", self.fingerprint)):
            if state.get(k) != mine:
                raise ValueError(f"loader state has {k}={state.get(k)!r}, this loader has {mine!r}")
        epoch, samples = int(state["epoch"]), int(state["samples"])
        n = len(self.spec.plan(epoch))
        if epoch < 0 or not 0 <= samples <= n:
            raise ValueError(f"loader state position epoch {epoch}, sample {samples} is outside the epoch plan "
                             f"of {n} samples")
        self.epoch, self.position = epoch, samples


_LIVE: "weakref.WeakSet[StreamLoader]" = weakref.WeakSet()


@atexit.register  # registered after multiprocessing's own exit hook, so it runs before it
def _close_live_loaders() -> None:
    """Workers ignore SIGTERM (below), so multiprocessing's exit hook, which terminates daemon
    children with SIGTERM and then joins them, would wait forever on a loader nobody closed."""
    for loader in list(_LIVE):
        loader.close()


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore SIGTERM/SIGUSR1/SIGINT, the main process decides.

    Slurm signals every process of a step (and a terminal's Ctrl-C the whole process group);
    torch's workers would otherwise die of it, and the main process would crash with 'DataLoader
    worker ... is killed by signal' instead of finishing the step and checkpointing. Workers still
    end when the main process shuts them down, and a worker whose parent has died exits on its
    own (torch's watchdog).
    """
    for name in ("SIGTERM", "SIGUSR1", "SIGINT"):
        signal.signal(getattr(signal, name), signal.SIG_IGN)


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
                decode: str = "cpu", on_error: str = "raise", cache_bytes: int | None = None) -> StreamLoader:
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
    on_error: every sample is checked against the member checksums in the index before decoding; a
    mismatch or decode failure raises SampleError naming shard, key and member ('raise', the
    default) or, with 'skip', is replaced by a deterministic draw from the same source, logged
    and listed in ``loader.skipped``.
    cache_dir / cache_bytes: where remote (``pipe:``/http) shards are cached and how large the
    cache may grow; default: one temporary folder per node and job, shared by all ranks and
    workers and removed when the last of them exits (see :mod:`vortex_data.shard_cache`).
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
    check_policy(on_error)
    train = split == "train" if training is None else bool(training)
    cfg = augment_choice(augment, train)
    out_size = size if size is not None else image_size
    base = cfg or AugmentConfig()
    if out_size is not None:
        base = AugmentConfig(**{**base.__dict__, "size": (int(out_size[0]), int(out_size[1]))})
    mix = resolve_mixture(mixture, manifest, manifests_dir)
    indices = tuple(read_source_index(mix.manifest_path(s, split), s.name, s.key_pattern) for s in mix.sources)
    if any(is_remote(url) for ix in indices for url in ix.shards):
        cache_dir = node_cache_dir(cache_dir)  # here, in the process that outlives its workers
    spec = LoaderSpec(
        indices=indices, weights=tuple(s.weight for s in mix.sources), epoch_size=mix.epoch_size,
        train=train, augmenting=cfg is not None, augment=base, batch_size=batch_size, seed=seed, rank=rank,
        world_size=world_size, drop_last=train if drop_last is None else drop_last,
        trim_pad=world_size == 1, window_batches=max(1, window_batches), mean=tuple(mean), std=tuple(std),
        cache_dir=cache_dir, profile=profile, photometric=photometric, decode=decode, on_error=on_error,
        cache_bytes=cache_bytes,
    )
    _say_unchecked(indices)
    fingerprint = f"{mix.name}:{mix.epoch_size}:" + ",".join(
        f"{s.name}={s.weight}:{len(ix)}" for s, ix in zip(mix.sources, indices))
    return StreamLoader(spec, [s.name for s in mix.sources], num_workers, prefetch_factor, fingerprint)


_SAID_UNCHECKED: set[str] = set()


def _say_unchecked(indices: Sequence[SourceIndex]) -> None:
    """Say once per manifest (per process) that its index predates checksums, so reads go unchecked."""
    for ix in indices:
        if ix.checksums is None and ix.manifest not in _SAID_UNCHECKED:
            _SAID_UNCHECKED.add(ix.manifest)
            log.warning("%s: the index has no member checksums (built before they existed); samples from it "
                        "are read without integrity checks. Rebuild the shards to get them.", ix.manifest)
