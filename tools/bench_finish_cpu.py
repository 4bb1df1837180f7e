#!/usr/bin/env python3
"""``loader.finish``'s RGB before the fused device phase and now, eagerly on the CPU (median ms
per batch of 16 at 384x512, 1 thread, both in one process): ``python tools/bench_finish_cpu.py``.
The GPU comparison (with the compiled phase) is ``tools/gpu_bench.py --sections h``."""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(1)
from gpu_bench import finish_before  # noqa: E402  (also puts the checkout on sys.path)
from vortex_data.stream import photometric as P, IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
b, h, w = 16, 384, 512
g = torch.Generator().manual_seed(0)
rgb = torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
factors = torch.stack([torch.rand(b, generator=g, dtype=torch.float64) * 0.8 + 0.6 for _ in range(3)] + [torch.rand(b, generator=g, dtype=torch.float64) * 0.2 - 0.1], 1)
order = torch.stack([torch.randperm(4, generator=g) for _ in range(b)])
batch = {"rgb": rgb, "jitter": factors, "jitter_order": order, "depth": torch.zeros(b, 1, h, w, dtype=torch.int32), "seg": torch.zeros(b, h, w, dtype=torch.uint8)}
def t(fn, n=5):
    fn(); ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1000
old = t(lambda: finish_before(batch, IMAGENET_MEAN, IMAGENET_STD))
new = t(lambda: P.finish_batch(batch, IMAGENET_MEAN, IMAGENET_STD, compiled=False))
nrm_old = t(lambda: rgb.to(torch.float64).div_(255.0).sub_(torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1,3,1,1)).div_(torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1,3,1,1)).to(torch.float32).contiguous(memory_format=torch.channels_last))
nrm_new = t(lambda: P.normalise(rgb, IMAGENET_MEAN, IMAGENET_STD))
print(f"batch {b}x3x{h}x{w}, 1 thread: finish before {old:.0f} ms, now (eager) {new:.0f} ms, ratio {new/old:.2f}; normalisation float64 {nrm_old:.0f} ms, float32 table {nrm_new:.0f} ms, ratio {nrm_new/nrm_old:.2f}")
