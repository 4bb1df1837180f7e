"""The streaming training loader, as a short pipeline of small stages, one module each.

===================  ==================================================================================
:mod:`.plan`         which plan positions each rank, batch and worker takes (pure functions; LoaderSpec)
:mod:`.read`         read a window of batches' encoded samples, grouped by shard, in file order
:mod:`.checked`      check each sample against its index checksums; replace a bad one or stop
:mod:`.batch`        decode + CPU geometry per sample, straight into the batch arrays (RawSample in)
:mod:`.collate`      arrays -> the batch dict of tensors: the one collate of every loader
:mod:`.dataset`      the stages composed: a rank's batches of an epoch (the DataLoader's dataset)
:mod:`.loader`       StreamLoader (workers, state_dict / load_state_dict, finish) and make_loader
:mod:`.workers`      DataLoader worker policy: allocator, stop signals
:mod:`.photometric`  the device phase after the DataLoader (``loader.finish``): colour jitter,
                     normalisation, GPU JPEG decode
===================  ==================================================================================

Resume state is one global plan position (see :mod:`.loader`);
the plan and every augmentation draw are pure functions of (seed, epoch, key, repeat), so only
the loader and the epoch dataset hold state. Everything named below is importable from here.
"""

from . import photometric
from .batch import IMAGENET_MEAN, IMAGENET_STD, build_batch, finish_on_cpu, normalise_into, rgb_lut
from .checked import MAX_REPLACEMENT_TRIES, CheckedSamples, checked_sample
from .collate import collate, trim, widen_labels
from .dataset import EpochDataset
from .loader import STATE_VERSION, StreamLoader, augment_choice, make_loader
from .photometric import finish_batch, to_device
from .plan import (DECODE, PHOTOMETRIC, LoaderSpec, batch_first, batch_positions, batches_per_rank, pad_mask,
                   worker_batches)
from .read import RawSample, read_window
from .workers import ignore_stop_signals, keep_freed_memory

__all__ = [
    "DECODE", "IMAGENET_MEAN", "IMAGENET_STD", "MAX_REPLACEMENT_TRIES", "PHOTOMETRIC", "STATE_VERSION",
    "CheckedSamples", "EpochDataset", "LoaderSpec", "RawSample", "StreamLoader", "augment_choice", "batch_first",
    "batch_positions", "batches_per_rank", "build_batch", "checked_sample", "collate", "finish_batch",
    "finish_on_cpu", "ignore_stop_signals", "keep_freed_memory", "make_loader", "normalise_into", "pad_mask",
    "photometric", "read_window", "rgb_lut", "to_device", "trim", "widen_labels", "worker_batches",
]
