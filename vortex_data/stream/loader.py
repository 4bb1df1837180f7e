"""The resumable loader: a DataLoader over the epoch dataset, its resume state, and ``make_loader``.

:class:`StreamLoader` runs :class:`vortex_data.stream.dataset.EpochDataset` in persistent
DataLoader workers (or in-process), counts the batches that reach the caller, and owns the one
resume contract of the pipeline (elastic, MosaicML-Streaming style): ``state_dict()`` records the
*global* position in the epoch plan, ``samples`` = plan positions consumed by all ranks together
(``s`` plus ``W*B`` per batch delivered). ``load_state_dict`` accepts it at any world size, batch
size or worker count: the next pass starts at that position, so the union of what the ranks yield
next is exactly the rest of the epoch, each sample once. Rounding: the last fewer-than-``W*B``
samples of the epoch are dropped in training (the same rule as every epoch's tail, now counted
from ``s``), padded by wrap-around with evaluation settings. Since plan and augmentation depend
only on (seed, epoch, key, repeat), resumed samples are identical to the uninterrupted run's.
``finish`` is the device phase (:mod:`vortex_data.stream.photometric`). :func:`make_loader` checks the
arguments, reads the source indices and builds the :class:`~vortex_data.stream.plan.LoaderSpec`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import DataLoader

from ..errors import InputError
from ..format.integrity import check_policy
from ..format.manifest import is_remote
from .augment import AugmentConfig
from .batch import IMAGENET_MEAN, IMAGENET_STD
from .batching import labelled_first, repeats_in_batch, repeats_warning
from .block_shuffle import DEFAULT_BLOCK
from .collate import widen_labels
from .dataset import EpochDataset
from .mixture import Mixture, SourceIndex, check_batching, read_source_index, resolve_mixture
from .photometric import finish_batch
from .plan import DECODE, PHOTOMETRIC, SHUFFLE, LoaderSpec
from .checked import require_complete, unchecked_allowed
from .shard_cache import node_cache_dir
from .workers import ignore_stop_signals, reraise_worker_errors

log = logging.getLogger(__package__)  # "vortex_data.stream", the name the docs give
STATE_VERSION = 2


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
        return self.spec.batches(self.epoch)

    def set_epoch(self, epoch: int) -> None:
        """The next pass is the whole of ``epoch``, whatever was read before (a part-read pass included)."""
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
        # Where the dataset copies (in-process, or in the persistent workers) stand once this pass
        # has run to its end; unknown while it runs, and after a pass left part-read they are
        # still inside it, so whatever comes next (set_epoch, load_state_dict) rebuilds them.
        self._next = None
        n = self.spec.plan_len(self.epoch)
        step = self.spec.step
        skipped0 = len(self.skipped)
        for b in reraise_worker_errors(self._dl):
            if self.spec.photometric == "cpu":
                widen_labels(b)  # uint8 across the worker boundary; finish() widens on the device
            for msg in b.pop("skipped", ()):
                log.warning("bad sample skipped: %s", msg)
                self.skipped.append(msg)
            self.position = min(n, self.position + step)  # an evaluation pass's padded last step ends at n
            yield b
        if len(self.skipped) > skipped0:
            log.warning("epoch %d: %d bad samples replaced (on_error='skip'); %d in total",
                        self.epoch, len(self.skipped) - skipped0, len(self.skipped))
        self.epoch, self.position = self.epoch + 1, 0
        self._next = (self.epoch, 0)

    def finish(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The device phase: a batch (moved with :func:`vortex_data.stream.photometric.to_device` or
        ``.to(device, non_blocking=True)`` per tensor) -> the finished float batch, on its device.
        The identity for ``photometric="cpu"`` batches, so training code can always call it."""
        return finish_batch(batch, self.spec.mean, self.spec.std)

    def close(self) -> None:
        """Stop persistent workers now (otherwise they stop when the loader is garbage-collected)."""
        dl, self._dl = self._dl, None
        it = getattr(dl, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()  # the graceful stop: workers leave their loop and exit

    def state_dict(self) -> dict[str, Any]:
        """``samples``: global plan positions of ``epoch`` consumed; ``epoch_samples``: the plan's
        length. world_size / batch_size are recorded for messages only: any may resume it."""
        s = self.spec
        state = {"version": STATE_VERSION, "epoch": self.epoch, "samples": self.position,
                 "epoch_samples": s.plan_len(self.epoch), "seed": s.seed, "fingerprint": self.fingerprint,
                 "world_size": s.world_size, "batch_size": s.batch_size}
        if s.train and s.shuffle == "blocks":
            state["shuffle_lanes"] = s.shuffle_lanes  # part of the plan: a resumed run keeps it
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``, saved at any world size, batch size or worker count. Refuses a
        state from a different seed or mixture, where 'the same samples' would have no meaning.
        A version-1 state (epoch, batches per rank) is converted: batches x world size x batch size."""
        version = state.get("version")
        needed = ("epoch", "batch", "world_size", "batch_size") if version == 1 else ("epoch", "samples")
        missing = [k for k in needed if k not in state]
        if version in (1, STATE_VERSION) and missing:
            raise InputError(f"loader state (version {version}) lacks {', '.join(map(repr, missing))}: it is not "
                             f"a StreamLoader.state_dict(); it has {sorted(state)}")
        if version == 1:
            state = {**state, "samples": int(state["batch"]) * int(state["world_size"]) * int(state["batch_size"])}
        elif version != STATE_VERSION:
            raise InputError(f"loader state version {version!r} is not one this loader reads (1, {STATE_VERSION})")
        for k, mine in (("seed", self.spec.seed), ("fingerprint", self.fingerprint)):
            if state.get(k) != mine:
                raise InputError(f"loader state has {k}={state.get(k)!r}, this loader has {mine!r}")
        epoch, samples = int(state["epoch"]), int(state["samples"])
        if self.spec.train and self.spec.shuffle == "blocks":
            # The lanes were fixed when the run started (its ranks x workers); keep them, so the
            # plan is the saved run's whatever this run's worker count (only locality changes).
            lanes = int(state.get("shuffle_lanes", 1))  # a state from before lanes: the plan without them
            if lanes != self.spec.shuffle_lanes:
                log.info("loader state: keeping the saved run's %d shuffle lanes (this loader has %d readers)",
                         lanes, self.spec.world_size * max(1, self.num_workers))
                self.spec = dataclasses.replace(self.spec, shuffle_lanes=lanes)
                self._dl = None
        by_batch = self.spec.batching != "random" or (self.spec.shuffle == "blocks" and self.spec.shuffle_lanes > 1)
        if by_batch and int(state.get("batch_size", 0)) != self.spec.batch_size and samples:
            # The plan is composed in blocks of the batch size: another size is another plan.
            how = (f"{self.spec.batching} batching composes" if self.spec.batching != "random"
                   else "the block shuffle's lanes deal out")
            raise InputError(f"loader state was saved at batch size {state.get('batch_size')}, this loader has "
                             f"{self.spec.batch_size}; {how} the epoch in blocks "
                             f"of the batch size, so resume mid-epoch at the same batch size (any world size)")
        n = self.spec.plan_len(epoch)
        if epoch < 0 or not 0 <= samples <= n:
            raise InputError(f"loader state position epoch {epoch}, sample {samples} is outside the epoch plan "
                             f"of {n} samples")
        self.epoch, self.position = epoch, samples



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
        raise InputError(f"augment must be one of {AUGMENT_ON + AUGMENT_OFF}, got {augment!r}")
    return AugmentConfig() if augment else None


def make_loader(mixture: Mixture | str | None = None, split: str = "train", batch_size: int = 8,
                augment: bool | str | AugmentConfig | None = None, num_workers: int = 0, seed: int = 0,
                rank: int = 0, world_size: int = 1, *, manifest: str | None = None,
                training: bool | None = None, image_size: Sequence[int] | None = None,
                size: Sequence[int] | None = None, manifests_dir: str | None = None,
                cache_dir: str | None = None, window_batches: int = 4, drop_last: bool | None = None,
                prefetch_factor: int = 2, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD, profile: bool = False, photometric: str = "cpu",
                decode: str = "cpu", on_error: str = "raise", cache_bytes: int | None = None,
                batching: str | None = None, shuffle: str = "global",
                shuffle_block: int = DEFAULT_BLOCK, shuffle_lanes: int | None = None,
                allow_unchecked_index: bool | None = None) -> StreamLoader:
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
    the batch's device (move it first with ``vortex_data.stream.photometric.to_device``).
    decode: ``"device"`` (needs photometric="device", JPEG RGB and torchvision): the workers ship
    ``jpeg`` (list of uint8 tensors), ``crop`` int64 (B,4) boxes y0, x0, h, w and ``flip`` bool
    (B,) instead of ``rgb``; ``finish`` decodes with ``torchvision.io.decode_jpeg`` on the
    batch's device and does the RGB crop/resize/flip there.
    on_error: every sample is checked against the member checksums in the index before decoding; a
    mismatch or decode failure raises SampleError naming shard, key and member ('raise', the
    default) or, with 'skip', is replaced by a deterministic draw from the same source, logged
    and listed in ``loader.skipped``.
    batching: how training batches are composed (default: the mixture's ``batching``, else
    'random'): 'random' (one shuffle of the epoch), 'stratified' (every batch holds each source's
    share exactly) or 'per_source' (every batch from one source, interleaved by weight); see
    :mod:`vortex_data.stream.batching`. Quotas, equal batch counts, resume and determinism hold in all.
    shuffle: the training order, ``"global"`` (one uniform permutation of the epoch) or ``"blocks"``
    (shards in random order cut into blocks of ``shuffle_block`` samples, each shuffled inside:
    a bounded set of shards at a time, for remote shards behind a node cache smaller than the
    dataset; see :mod:`vortex_data.stream.block_shuffle`). Quotas, batch counts and resume are the same;
    only with batching='random'. shuffle_lanes (blocks only; default ``world_size * num_workers``,
    the readers of this run): the plan deals each shard to one lane, so that each reader opens
    its own shards; a resumed run keeps the saved run's lanes, and a run with the same seed and
    another worker count gets another (equally valid) order unless it passes the same lanes.
    allow_unchecked_index: an index without member checksums or offsets (an older build) is refused,
    naming ``vortex-data reindex``; True reads it anyway, unchecked (default: the environment
    variable ``VORTEX_DATA_ALLOW_UNCHECKED_INDEX``).
    cache_dir / cache_bytes: where remote (``pipe:``/http) shards and the sources' memory-mapped
    per-sample arrays are cached and how large the shard cache may grow; default: one temporary folder per node and job, shared by all ranks and
    workers and removed when the last of them exits (see :mod:`vortex_data.stream.shard_cache`).
    """
    if photometric not in PHOTOMETRIC:
        raise InputError(f"photometric must be one of {PHOTOMETRIC}, got {photometric!r}")
    if decode not in DECODE:
        raise InputError(f"decode must be one of {DECODE}, got {decode!r}")
    if decode == "device" and photometric != "device":
        raise InputError("decode='device' ships undecoded RGB, so it needs photometric='device'")
    if shuffle not in SHUFFLE:
        raise InputError(f"shuffle must be one of {SHUFFLE}, got {shuffle!r}")
    if shuffle_block < 1:
        raise InputError(f"shuffle_block must be positive, got {shuffle_block}")
    if shuffle_lanes is None:
        shuffle_lanes = world_size * max(1, num_workers) if shuffle == "blocks" else 1
    if shuffle_lanes < 1:
        raise InputError(f"shuffle_lanes must be positive, got {shuffle_lanes}")
    if not 0 <= rank < world_size:
        raise InputError(f"rank {rank} outside world size {world_size}")
    if batch_size <= 0:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    check_policy(on_error)
    train = split == "train" if training is None else bool(training)
    cfg = augment_choice(augment, train)
    out_size = size if size is not None else image_size
    base = cfg or AugmentConfig()
    if out_size is not None:
        base = AugmentConfig(**{**base.__dict__, "size": (int(out_size[0]), int(out_size[1]))})
    mix = resolve_mixture(mixture, manifest, manifests_dir)
    batching = check_batching(mix.batching if batching is None else batching) if train else "random"
    if shuffle == "blocks" and batching != "random":
        raise InputError(f"shuffle='blocks' orders a random plan; batching={batching!r} composes its own")
    # Per-sample arrays memory-mapped from the node's cache: the spec pickled to each worker names
    # their folder only, and every worker and rank on the node shares one copy in the page cache.
    indices = tuple(read_source_index(mix.manifest_path(s, split), s.name, s.key_pattern, cache_dir, cache_bytes)
                    for s in mix.sources)
    if any(is_remote(url) for ix in indices for url in ix.shards):
        cache_dir = node_cache_dir(cache_dir)  # here, in the process that outlives its workers
    spec = LoaderSpec(
        indices=indices, weights=tuple(s.weight for s in mix.sources), epoch_size=mix.epoch_size,
        train=train, augmenting=cfg is not None, augment=base, batch_size=batch_size, seed=seed, rank=rank,
        world_size=world_size, drop_last=train if drop_last is None else drop_last,
        trim_pad=world_size == 1, window_batches=max(1, window_batches), mean=tuple(mean), std=tuple(std),
        cache_dir=cache_dir, profile=profile, photometric=photometric, decode=decode, on_error=on_error,
        cache_bytes=cache_bytes, batching=batching, shuffle=shuffle, shuffle_block=shuffle_block,
        shuffle_lanes=shuffle_lanes,
        strata_order=(labelled_first([ix.manifest for ix in indices], [s.key_pattern for s in mix.sources])
                      if batching == "stratified" else None),
    )
    if unchecked_allowed(allow_unchecked_index):
        _say_unchecked(indices)
    else:
        for ix in indices:
            require_complete(ix)
    repeats = repeats_warning(repeats_in_batch([s.name for s in mix.sources], [len(ix) for ix in indices], batching,
                                               batch_size), batch_size)
    if repeats:
        log.warning("%s: %s", mix.name, repeats)
    fingerprint = f"{mix.name}:{mix.epoch_size}:" + ",".join(
        f"{s.name}={s.weight}:{len(ix)}" for s, ix in zip(mix.sources, indices))
    if batching != "random":  # another composition is another plan (random keeps older checkpoints valid)
        fingerprint += f":{batching}"
    if shuffle == "blocks":  # another order: a state saved under the other mode must not resume here
        fingerprint += f":blocks={shuffle_block}"
    return StreamLoader(spec, [s.name for s in mix.sources], num_workers, prefetch_factor, fingerprint)


_SAID_UNCHECKED: set[str] = set()


def _say_unchecked(indices: Sequence[SourceIndex]) -> None:
    """With allow_unchecked_index: say once per manifest (per process) that its index predates
    checksums, so reads go unchecked, or member offsets, so each worker scans a shard's tar headers
    once before reading it."""
    for ix in indices:
        if not ix.has_offsets and ix.manifest + "\0offsets" not in _SAID_UNCHECKED:
            _SAID_UNCHECKED.add(ix.manifest + "\0offsets")
            log.warning("%s: the index has no member offsets (built before they existed); each worker scans a "
                        "shard's tar headers once before reading it. `vortex-data reindex %s` adds them.",
                        ix.manifest, ix.manifest)
        if ix.checksums is None and ix.manifest not in _SAID_UNCHECKED:
            _SAID_UNCHECKED.add(ix.manifest)
            log.warning("%s: the index has no member checksums (built before they existed); samples from it "
                        "are read without integrity checks. `vortex-data reindex %s` adds them.", ix.manifest, ix.manifest)
