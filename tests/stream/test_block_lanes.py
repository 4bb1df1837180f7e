"""Lanes of the block shuffle: each reader reads its own shards, and a resumed run keeps the plan."""

import numpy as np
import pytest

from vortex_data.errors import InputError
from vortex_data.format.manifest import load_manifest
from vortex_data.stream.block_shuffle import plan_epoch_blocks
from vortex_data.stream.mixture import Mixture, Source
from vortex_data.stream import make_loader

from loader_data import build


def lanes_of(plan, batch_size, lanes):
    return (np.arange(len(plan)) // batch_size) % lanes


@pytest.mark.parametrize("epoch_size", [1500, 4100])  # under one pass of the big source, and cycling it
def test_each_lane_reads_its_own_stretch_of_shards_with_the_same_quotas(epoch_size):
    shard_of = [np.repeat(np.arange(80), 25), np.repeat(np.arange(6), 10)]  # 2000 and 60 samples
    one = plan_epoch_blocks(shard_of, [0.7, 0.3], epoch_size, seed=3, epoch=1, block_size=64)
    four = plan_epoch_blocks(shard_of, [0.7, 0.3], epoch_size, seed=3, epoch=1, block_size=64, lanes=4, batch_size=8)
    assert np.array_equal(one.source, four.source)  # the same interleave, so the same quotas per batch
    for s, n in ((0, 2000), (1, 60)):  # the cycling rule: each sample floor/ceil(q/n) times, pass numbers in step
        mine = four.source == s
        counts = np.bincount(four.index[mine], minlength=n)
        assert counts.max() - counts.min() <= 1 and counts.sum() == mine.sum()
        assert np.array_equal(np.sort(four.repeat[mine]), np.sort(one.repeat[one.source == s]))
    lane = lanes_of(four, 8, 4)
    big = four.source == 0
    passes = int(four.repeat[big].max()) + 1
    sets = [[set(shard_of[0][four.index[big & (lane == ln) & (four.repeat == p)]].tolist()) for ln in range(4)]
            for p in range(passes)]
    for per_pass in sets:
        shared = sum(len(a & b) for i, a in enumerate(per_pass) for b in per_pass[i + 1:])
        assert shared <= 3  # lane after lane: only a shard where one stretch ends and the next begins
    spread = [set(shard_of[0][one.index[big & (lane == ln)]].tolist()) for ln in range(4)]
    assert sum(len(a & b) for i, a in enumerate(spread) for b in spread[i + 1:]) > 20  # without lanes: shared
    again = plan_epoch_blocks(shard_of, [0.7, 0.3], epoch_size, seed=3, epoch=1, block_size=64, lanes=4, batch_size=8)
    assert np.array_equal(four.index, again.index) and np.array_equal(four.repeat, again.repeat)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("lanes")
    return build(root, "nyu", 48, 4)  # 12 shards of 4


def mix(manifest, epoch_size=40):
    return Mixture((Source("nyu", str(manifest), 1.0),), epoch_size, "t")


def shard_by_key(manifest):
    rows = load_manifest(manifest).read_index().to_pylist()
    return {r["key"]: r["shard"] for r in rows}


def test_two_workers_with_two_lanes_open_disjoint_shards(built, tmp_path):
    where = shard_by_key(built)
    kw = dict(batch_size=2, size=(16, 16), cache_dir=str(tmp_path), shuffle="blocks", shuffle_block=8,
              num_workers=2, profile=True)
    for lanes, most_shared in ((None, 1), (1, 12)):
        loader = make_loader(mix(built), shuffle_lanes=lanes, **kw)
        assert loader.spec.shuffle_lanes == (2 if lanes is None else 1)  # default: world size x workers
        read: dict[int, set] = {0: set(), 1: set()}
        for b in loader:
            read[b["timing"]["worker"]] |= {where[k] for k in b["key"]}
        loader.close()
        shared = len(read[0] & read[1])
        assert shared <= most_shared and (lanes is None or shared >= 4), (lanes, read)


def test_a_resumed_run_keeps_the_saved_lanes_at_any_worker_count(built, tmp_path):
    kw = dict(batch_size=2, size=(16, 16), cache_dir=str(tmp_path), shuffle="blocks", shuffle_block=8)
    full = [k for b in make_loader(mix(built), shuffle_lanes=4, **kw) for k in b["key"]]
    first = make_loader(mix(built), num_workers=2, world_size=2, rank=0, **kw)  # 2 ranks x 2 workers: 4 lanes
    assert first.spec.shuffle_lanes == 4
    state = {**first.state_dict(), "samples": 12}  # three global steps of 2 ranks x 2 samples consumed
    assert state["shuffle_lanes"] == 4
    second = make_loader(mix(built), **kw)  # one rank, in-process: would be 1 lane on its own
    second.load_state_dict(state)
    assert second.spec.shuffle_lanes == 4
    assert [k for b in second for k in b["key"]] == full[12:12 + len(full) - 12]
    with pytest.raises(InputError, match="batch size"):
        make_loader(mix(built), **{**kw, "batch_size": 4}).load_state_dict(state)


def test_listing_only_the_shards_taken_gives_the_general_order():
    from vortex_data.stream.block_shuffle import shard_order, shard_spans

    rng = np.random.default_rng(1)
    for t in range(200):
        n = int(rng.integers(1, 300))
        shard_of = np.sort(rng.integers(0, int(rng.integers(1, 30)), n))  # gaps and empty shards included
        take = int(rng.integers(0, n + 1))
        general = shard_order(shard_of, np.random.default_rng(t), take)
        assert np.array_equal(general, shard_order(shard_of, np.random.default_rng(t), take, shard_spans(shard_of)))
        assert len(general) == take
    assert shard_spans(np.array([0, 0, 2, 1, 1])) is None  # not shard after shard: the general case
