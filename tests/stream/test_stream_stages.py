"""The loader's stages one by one: plan, read a window, integrity, decode + geometry, collate; the
resume contract of every stateful stage (epoch dataset, synthetic loader); one collate for all."""

import numpy as np
import pytest
import torch

from vortex_data.stream.augment import AugmentConfig
from vortex_data.format.integrity import SampleError
from vortex_data.stream.mixture import Mixture, Source
from vortex_data.stream.shard_reader import ShardReader
from vortex_data.stream import (CheckedSamples, EpochDataset, RawSample, batch_first, batch_positions, batches_per_rank,
                                build_batch, make_loader, pad_mask, read_window, trim, worker_batches)
from vortex_data.stream.collate import collate
from vortex_data.train.data import SyntheticBatches

from loader_data import build
from resume_helper import assert_resumes_exactly

SIZE = (32, 48)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    build(root, "nyu", 13, 5)                   # shards of 5, 5, 3
    build(root, "diode", 7, 3, with_seg=False)  # label-less
    return root / "manifests"


def mix(mdir, epoch_size=12):
    return Mixture((Source("nyu", "nyu-{split}.json", 0.6), Source("diode", "diode-{split}.json", 0.4)), epoch_size,
                   "t", mdir)


# ---- plan: pure splitting functions

def test_plan_splits_steps_into_rank_slices_and_batches_round_robin_over_workers():
    assert batches_per_rank(25, 2, 3, drop_last=True) == 4 and batches_per_rank(25, 2, 3, drop_last=False) == 5
    assert batch_first(1, rank=2, world_size=3, batch_size=2, offset=5) == 5 + (3 + 2) * 2
    # every position of a step exactly once, rank by rank
    step = np.concatenate([batch_positions(1, r, 3, 2, 100) for r in range(3)])
    assert step.tolist() == list(range(6, 12))
    assert batch_positions(4, 2, 3, 2, 25).tolist() == [28 % 25, 29 % 25]  # past the end: wrapped (padding)
    assert pad_mask(24, 2, 25).tolist() == [False, True]
    assert [list(worker_batches(0, 7, w, 3)) for w in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(j for w in range(3) for j in worker_batches(2, 7, w, 3)) == list(range(2, 7))


# ---- read a window, grouped by shard

class CountingReader(ShardReader):
    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, list[str]]] = []

    def read_group(self, url, keys, spans=None):
        keys = list(keys)
        self.calls.append((url, keys))
        return super().read_group(url, keys, spans)


def test_read_window_reads_each_shard_once_and_returns_every_sample(sets):
    spec = make_loader(mix(sets), batch_size=4, size=SIZE, seed=1).spec
    plan = spec.plan(0)
    positions = np.arange(len(plan))
    reader = CountingReader()
    raw = read_window(reader, spec.indices, plan, positions)
    urls = [u for u, _ in reader.calls]
    assert len(urls) == len(set(urls))  # one read per shard, however the plan shuffles it
    want = {(int(plan.source[p]), spec.indices[int(plan.source[p])].keys[int(plan.index[p])]) for p in positions}
    assert set(raw) == want and all({"json", "rgb.jpg", "depth.npy.zst"} <= set(m) for m in raw.values())


# ---- integrity: checked members, deterministic replacement

def test_checked_samples_raise_or_replace_the_same_way_every_time(sets):
    spec = make_loader(mix(sets), batch_size=4, size=SIZE, seed=1).spec
    plan = spec.plan(0)
    raw = read_window(ShardReader(), spec.indices, plan, np.arange(4))
    src, idx = int(plan.source[0]), int(plan.index[0])
    key = spec.indices[src].keys[idx]
    members = dict(raw[(src, key)])
    ext = "rgb.jpg"
    members[ext] = members[ext][:-1] + bytes([members[ext][-1] ^ 1])
    bad = {**raw, (src, key): members}
    with pytest.raises(SampleError, match=ext):
        CheckedSamples(spec, ShardReader()).sample(plan, 0, 0, bad)
    skip = type(spec)(**{**spec.__dict__, "on_error": "skip"})
    a, b = CheckedSamples(skip, ShardReader()), CheckedSamples(skip, ShardReader())
    ra, rb = a.sample(plan, 0, 0, bad), b.sample(plan, 0, 0, bad)
    assert ra.key == rb.key != key and ra.source == src
    assert len(a.take_skipped()) == 1 and a.take_skipped() == []
    assert a.sample(plan, 0, 1, raw).key == spec.indices[int(plan.source[1])].keys[int(plan.index[1])]


# ---- decode + CPU geometry, and the one collate

def test_build_batch_writes_the_documented_fields_in_each_mode(sets):
    spec = make_loader(mix(sets), batch_size=4, size=SIZE, seed=1).spec
    plan = spec.plan(0)
    raw = read_window(ShardReader(), spec.indices, plan, np.arange(3))
    samples = [RawSample(k, m, s) for (s, k), m in raw.items()]
    cfg = AugmentConfig(size=SIZE)
    cpu = build_batch(samples, cfg, True, 0, 0)
    dev = build_batch(samples, cfg, True, 0, 0, photometric="device")
    assert cpu["rgb"].dtype == torch.float32 and cpu["rgb"].shape == (3, 3, *SIZE)
    assert cpu["rgb"].is_contiguous(memory_format=torch.channels_last)
    assert dev["rgb"].dtype == torch.uint8 and dev["depth"].dtype == torch.uint16 and dev["seg"].dtype == torch.uint8
    assert torch.equal(cpu["depth"], dev["depth"].float().mul(1.0 / 1000)) and torch.equal(cpu["seg"], dev["seg"])
    assert dev["jitter"].shape == (3, 4) and dev["jitter_order"].dtype == torch.int64
    assert cpu["key"] == dev["key"] == [s.key for s in samples]
    assert cpu["dataset"].tolist() == [s.source for s in samples]


def test_collate_wraps_arrays_without_copying_and_trim_keeps_the_chosen_samples():
    rgb = np.zeros((2, 4, 5, 3), np.float32)
    depth = np.ones((2, 1, 4, 5), np.uint16)
    b = collate(rgb=rgb, depth=depth, seg=np.zeros((2, 4, 5), np.uint8), has_seg=[True, False], dataset=[0, 1],
                key=["a", "b"], intrinsics=[(1, 2, 3, 4), (5, 6, 7, 8)], flip=np.array([True, False]), jpeg=["x", "y"])
    rgb[1, 0, 0, 2] = 7  # the batch is a view of the arrays the samples were written into
    assert float(b["rgb"][1, 2, 0, 0]) == 7 and b["rgb"].shape == (2, 3, 4, 5)
    assert b["has_seg"].dtype == torch.bool and b["dataset"].dtype == torch.int64
    assert b["intrinsics"].dtype == torch.float32 and b["flip"].dtype == torch.bool and b["jpeg"] == ["x", "y"]
    t = trim(b, torch.tensor([False, True]))
    assert t["key"] == ["b"] and t["jpeg"] == ["y"] and t["depth"].shape == (1, 1, 4, 5)


def test_the_synthetic_loader_and_the_stream_loader_give_the_same_fields_and_dtypes(sets):
    ours = next(iter(make_loader(mix(sets), batch_size=2, size=SIZE, seed=1)))
    synth = SyntheticBatches(batch_size=2, image_size=SIZE).batch(0)
    ours.pop("is_pad")
    assert set(ours) == set(synth)
    for k, v in ours.items():
        if isinstance(v, torch.Tensor):
            assert synth[k].dtype == v.dtype and synth[k].shape == v.shape, k
    assert synth["rgb"].is_contiguous(memory_format=torch.channels_last)
    assert synth["seg"][1].eq(255).all() and not synth["has_seg"][1]  # the label-less sample


# ---- the resume contract of every stateful stage

def test_epoch_dataset_resumes_exactly_from_its_state(sets):
    spec = make_loader(mix(sets), batch_size=2, size=SIZE, seed=3).spec  # 6 batches per epoch
    state, _, _ = assert_resumes_exactly(lambda: EpochDataset(spec, 0, 0), 4, 5)  # across the epoch boundary
    assert state == {"epoch": 0, "samples": 8}


def test_synthetic_loader_resumes_exactly_from_its_state():
    state, _, _ = assert_resumes_exactly(lambda: SyntheticBatches(batch_size=2, image_size=(16, 24), seed=2), 2, 2)
    assert state == {"index": 2}


def test_docs_name_every_stage_module():
    """docs/loader.md's stage table and the package's modules stay the same list."""
    import re
    from pathlib import Path

    import vortex_data.stream as stream

    pkg = Path(stream.__file__).parent
    table = re.findall(r"^\| `(\w+\.py)` \|", (Path(__file__).resolve().parents[2] / "docs" / "loader.md").read_text(), re.M)
    assert sorted(table) == sorted(p.name for p in pkg.glob("*.py") if p.name != "__init__.py")


def test_plan_len_is_the_length_of_the_plan_without_drawing_it(sets):
    from dataclasses import replace

    from vortex_data.stream import make_loader

    for training in (True, False):
        spec = make_loader(mix(sets), batch_size=2, size=SIZE, training=training).spec
        for epoch_size in (7, 12, 31):
            s = replace(spec, epoch_size=epoch_size)
            assert all(s.plan_len(e) == len(s.plan(e)) for e in range(3))
