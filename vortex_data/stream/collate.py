"""Stage 5, collate: per-batch arrays -> the batch dict of tensors, for every loader of the package.

The streaming loader's workers (:func:`vortex_data.stream.batch.build_batch`) and the trainer's
synthetic loader (:mod:`vortex_data.train.data`) both end here, so a batch has one set of field
names and dtypes whoever made it. The arrays are wrapped, not copied (``torch.from_numpy``):
the stages before write every sample straight into them. RGB arrives (B,H,W,3) and leaves as a
(B,3,H,W) view in channels-last memory, what the device phase and the encoder's convolutions
prefer. Labels cross the DataLoader worker boundary as uint8 (an eighth of int64's bytes);
:func:`widen_labels` makes them int64 where the batch is finished.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch


def collate(*, depth: np.ndarray, seg: np.ndarray, has_seg: Sequence[bool], dataset: Sequence[int],
            key: Sequence[str], intrinsics: Sequence[Sequence[float]] | np.ndarray,
            rgb: np.ndarray | None = None, **extra: Any) -> dict[str, Any]:
    """The batch of ``B`` samples: ``has_seg`` bool (B,), ``dataset`` int64 (B,), ``key`` list of
    str, ``intrinsics`` float32 (B,4), ``seg`` (B,H,W) and ``depth`` (B,1,H,W) as their arrays'
    dtypes, ``rgb`` (B,3,H,W) from a (B,H,W,3) array (omitted when None), and every ``extra``
    field (numpy arrays wrapped as tensors, anything else as it is)."""
    batch: dict[str, Any] = {
        "has_seg": torch.tensor(list(has_seg), dtype=torch.bool),
        "dataset": torch.tensor(list(dataset), dtype=torch.int64),
        "key": list(key),
        "intrinsics": torch.tensor(np.asarray(intrinsics, dtype=np.float32)),
        "seg": torch.from_numpy(seg),
    }
    if rgb is not None:
        batch["rgb"] = torch.from_numpy(rgb).permute(0, 3, 1, 2)  # channels-last memory
    batch["depth"] = torch.from_numpy(depth)
    for k, v in extra.items():
        batch[k] = torch.from_numpy(v) if isinstance(v, np.ndarray) else v
    return batch


def widen_labels(batch: dict[str, Any]) -> dict[str, Any]:
    """``seg`` -> int64 in place (the finished batch's dtype, what the loss indexes with)."""
    batch["seg"] = batch["seg"].long()
    return batch


def trim(batch: dict[str, Any], keep: torch.Tensor) -> dict[str, Any]:
    """The batch restricted to the samples where ``keep`` is true."""
    idx = keep.nonzero().flatten().tolist()
    return {k: ([v[i] for i in idx] if isinstance(v, list) else v[keep] if isinstance(v, torch.Tensor) else v)
            for k, v in batch.items()}
