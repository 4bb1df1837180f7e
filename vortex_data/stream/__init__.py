"""Shards -> batches: the mixture, the shard reader and its node cache, augmentation, and the
streaming training loader as a short pipeline of small stages, one module each.

=======================  ==============================================================================
:mod:`.mixture`          recipes, weights, exact per-epoch quotas and the sample plan (no torch)
:mod:`.batching`         batch composition: how the plan's positions are grouped into batches
:mod:`.block_shuffle`    the locality-aware epoch plan (blocks of a shard's samples)
:mod:`.sample_index`     a source's per-sample arrays, memory-mapped once per node
:mod:`.shard_reader`     random-access reads of samples from local or remote shards
:mod:`.shard_cache`      the node-local cache of remote shards (``pipe:``, ``http(s)://``)
:mod:`.augment`          V5 augmentation: joint geometric transforms of rgb/depth/seg
:mod:`.plan`             which plan positions each rank, batch and worker takes (pure functions; LoaderSpec)
:mod:`.read`             read a window of batches' encoded samples, grouped by shard, in file order
:mod:`.checked`          check each sample against its index checksums; replace a bad one or stop
:mod:`.batch`            decode + CPU geometry per sample, straight into the batch arrays (RawSample in)
:mod:`.collate`          arrays -> the batch dict of tensors: the one collate of every loader
:mod:`.dataset`          the stages composed: a rank's batches of an epoch (the DataLoader's dataset)
:mod:`.loader`           StreamLoader (workers, state_dict / load_state_dict, finish) and make_loader
:mod:`.workers`          DataLoader worker policy: allocator, stop signals
:mod:`.photometric`      the device phase after the DataLoader (``loader.finish``): colour jitter,
                         normalisation, GPU JPEG decode
=======================  ==============================================================================

Resume state is one global plan position (see :mod:`.loader`);
the plan and every augmentation draw are pure functions of (seed, epoch, key, repeat), so only
the loader and the epoch dataset hold state. Every name in ``__all__`` is importable from here;
they are loaded on first use, so ``from vortex_data.stream.mixture import ...`` does not import
torch (a user who only plans a mixture needs none).
"""

from __future__ import annotations

import importlib

# name -> the submodule that defines it. The collate function is reached as
# ``vortex_data.stream.collate.collate``: a lazy package attribute cannot share a submodule's name.
_NAMES = {
    "IMAGENET_MEAN": "batch", "IMAGENET_STD": "batch", "build_batch": "batch", "finish_on_cpu": "batch",
    "normalise_into": "batch", "rgb_lut": "batch",
    "MAX_REPLACEMENT_TRIES": "checked", "CheckedSamples": "checked", "checked_sample": "checked",
    "trim": "collate", "widen_labels": "collate",
    "EpochDataset": "dataset",
    "STATE_VERSION": "loader", "StreamLoader": "loader", "augment_choice": "loader", "make_loader": "loader",
    "finish_batch": "photometric", "to_device": "photometric",
    "DECODE": "plan", "PHOTOMETRIC": "plan", "LoaderSpec": "plan", "batch_first": "plan", "batch_positions": "plan",
    "batches_per_rank": "plan", "pad_mask": "plan", "worker_batches": "plan",
    "RawSample": "read", "read_window": "read",
    "ignore_stop_signals": "workers", "keep_freed_memory": "workers",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    try:
        module = _NAMES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
