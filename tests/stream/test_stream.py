"""The streaming loader: batch contents, 16-bit depth, DDP/worker splitting, exact resume, remote shards."""

import json

import numpy as np
import pytest
import torch

from vortex_data.stream.mixture import Mixture, Source
from vortex_data.format.schema import decode_sample
from vortex_data.stream.shard_reader import ShardReader
from vortex_data.stream import make_loader

from loader_data import build
from resume_helper import assert_resumes_exactly

SIZE = (32, 48)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    build(root, "nyu", 13, 5)                       # shards of 5, 5, 3
    build(root, "diode", 7, 3, with_seg=False)      # label-less, shards of 3, 3, 1
    build(root, "sunrgbd", 5, 2, array_codec="png")  # 16-bit PNG depth, shards of 2, 2, 1
    build(root, "tiny", 3, 8)                        # a single shard
    return root / "manifests"


def mix(mdir, names=("nyu", "diode", "sunrgbd"), weights=(0.5, 0.3, 0.2), epoch_size=24):
    return Mixture(tuple(Source(n, f"{n}-{{split}}.json", w) for n, w in zip(names, weights)), epoch_size,
                   "test", mdir)


def keys(loader):
    return [k for b in loader for k in b["key"]]


def test_batch_fields_shapes_and_types(sets):
    loader = make_loader(mix(sets), batch_size=4, size=SIZE, seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 6
    b = batches[0]
    assert b["rgb"].shape == (4, 3, *SIZE) and b["rgb"].dtype == torch.float32
    assert b["depth"].shape == (4, 1, *SIZE) and b["depth"].dtype == torch.float32
    assert b["seg"].shape == (4, *SIZE) and b["seg"].dtype == torch.int64
    assert b["has_seg"].dtype == torch.bool and b["intrinsics"].shape == (4, 4)
    assert b["dataset"].dtype == torch.int64 and len(b["key"]) == 4
    counts = np.bincount(torch.cat([x["dataset"] for x in batches]).numpy(), minlength=3)
    assert counts.tolist() == [12, 7, 5]  # exact quotas of 24 at weights .5/.3/.2
    assert abs(float(torch.cat([x["rgb"] for x in batches]).mean())) < 1.5  # normalised


def test_depth_is_16_bit_metres_exactly(sets):
    """Stock 8-bit image decoders would squash the 16-bit PNG depth; the loader must not."""
    loader = make_loader(mix(sets, ("sunrgbd",), (1.0,), 5), split="train", augment=False, batch_size=5,
                         size=(48, 64))  # native size: the eval transform is the identity
    b = next(iter(loader))
    m = json.loads((sets / "sunrgbd-train.json").read_text())
    reader, found = ShardReader(), {}
    for s in m["shards"]:
        url = str(sets / s["path"])
        found.update(reader.read_group(url, list(reader.table(url))))
    for i, key in enumerate(b["key"]):
        ref = decode_sample(found[key], key)["depth_mm"]
        assert ref.max() > 255
        got = b["depth"][i, 0].numpy()
        assert np.array_equal(np.rint(got * 1000).astype(np.uint16), ref)
        assert np.allclose(got, ref / 1000.0, rtol=0, atol=1e-6)


def test_label_less_batch_has_ignore_seg_and_no_has_seg(sets):
    loader = make_loader(mix(sets, ("diode",), (1.0,), 6), batch_size=3, size=SIZE)
    for b in loader:
        assert not b["has_seg"].any() and bool((b["seg"] == 255).all())
    labelled = next(iter(make_loader(mix(sets, ("nyu",), (1.0,), 6), batch_size=3, size=SIZE)))
    assert labelled["has_seg"].all() and (labelled["seg"] < 6).float().mean() > 0.5


def test_ranks_get_equal_batches_disjoint_samples(sets):
    m = mix(sets, epoch_size=25)  # 25 samples over 3 ranks x 2: 4 batches each, 1 dropped
    per_rank = [[b["key"] for b in make_loader(m, batch_size=2, size=SIZE, rank=r, world_size=3)] for r in range(3)]
    assert [len(p) for p in per_rank] == [4, 4, 4]
    full = keys(make_loader(m, batch_size=2, size=SIZE))  # the single-rank order of the same plan
    interleaved = [k for step in zip(*per_rank) for batch in step for k in batch]
    assert interleaved == full[:24]
    val = [list(make_loader(m, split="train", augment=False, batch_size=4, size=SIZE, rank=r, world_size=3,
                            drop_last=False)) for r in range(3)]
    assert len({len(v) for v in val}) == 1  # padded to equal length
    pads = sum(int(b["is_pad"].sum()) for v in val for b in v)
    assert pads == 3 * 4 * len(val[0]) - 25


def test_workers_outnumbering_shards_give_the_same_batches(sets):
    m = mix(sets, ("tiny",), (1.0,), 8)  # one shard, two workers, cycled 3 samples
    ref = make_loader(m, batch_size=1, size=SIZE, seed=5)
    got = make_loader(m, batch_size=1, size=SIZE, seed=5, num_workers=2)
    a, b = list(ref), list(got)
    assert [x["key"] for x in a] == [x["key"] for x in b]
    assert all(torch.equal(x["rgb"], y["rgb"]) for x, y in zip(a, b))


def test_resume_mid_epoch_sees_exactly_the_same_samples_and_augmentations(sets):
    m = mix(sets)
    kw = dict(batch_size=3, size=SIZE, seed=7)
    # epoch 0 (8 batches), 3 batches into epoch 1, "crash", then the other 5 of epoch 1; with every
    # field of every batch equal to an uninterrupted run's, and the worker count may change.
    state, before, after = assert_resumes_exactly(lambda: make_loader(m, num_workers=2, **kw), 8 + 3, 5,
                                                  make_resumed=lambda: make_loader(m, num_workers=1, **kw))
    assert (state["epoch"], state["samples"]) == (1, 9)  # 3 batches of 3 on one rank
    want = before + after
    assert [b["key"] for b in want[:8]] != [b["key"] for b in want[8:]]  # epochs are reshuffled
    other = make_loader(m, batch_size=3, size=SIZE, seed=8)
    with pytest.raises(ValueError, match="seed"):
        other.load_state_dict(state)


def by_position(batches):
    """(key, rgb) per sample of a list of batches, in order."""
    return [(k, b["rgb"][i]) for b in batches for i, k in enumerate(b["key"])]


def interleave_ranks(loaders):
    """What ranks stepping together yield, in plan order: step by step, rank by rank."""
    per_rank = [by_position(list(lo)) for lo in loaders]
    bs = [lo.spec.batch_size for lo in loaders][0]
    out = []
    for step in range(len(per_rank[0]) // bs):
        for r in per_rank:
            out += r[step * bs:(step + 1) * bs]
    return out


def test_elastic_resume_across_world_size_batch_size_and_workers(sets):
    """A state saved by 2 ranks x batch 3 (2 workers) resumes at 3 ranks x batch 2 and 1 rank x batch 5:
    together the ranks yield exactly the rest of the epoch (each sample once, identical pixels);
    only the last partial global batch is dropped."""
    m = mix(sets)  # 24 samples per epoch
    ref = by_position(list(make_loader(m, batch_size=1, size=SIZE, seed=4)))  # sample at each plan position
    assert len(ref) == 24
    old = [make_loader(m, batch_size=3, size=SIZE, seed=4, rank=r, world_size=2, num_workers=2 - r) for r in (0, 1)]
    seen = []
    for lo in old:
        it = iter(lo)
        seen.append(by_position([next(it), next(it)]))  # two steps on both ranks
        lo.close()
    states = [lo.state_dict() for lo in old]
    assert states[0] == states[1] and states[0]["samples"] == 12 and states[0]["epoch"] == 0
    assert [k for k, _ in seen[0][:3] + seen[1][:3] + seen[0][3:] + seen[1][3:]] == [k for k, _ in ref[:12]]

    new = [make_loader(m, batch_size=2, size=SIZE, seed=4, rank=r, world_size=3, num_workers=1) for r in range(3)]
    for lo in new:
        lo.load_state_dict(states[0])
    rest = interleave_ranks(new)
    assert [k for k, _ in rest] == [k for k, _ in ref[12:]]  # 12 = 2 steps of 3 x 2: nothing to round
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rest, ref[12:]))  # same augmentation

    one = make_loader(m, batch_size=5, size=SIZE, seed=4)
    one.load_state_dict(states[0])
    rest = by_position(list(one))
    assert [k for k, _ in rest] == [k for k, _ in ref[12:22]]  # 12 left, global batch 5: the last 2 dropped
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(rest, ref[12:22]))
    assert one.state_dict()["epoch"] == 1 and one.state_dict()["samples"] == 0

    v1 = {"version": 1, "epoch": 0, "batch": 2, "world_size": 2, "batch_size": 3, "seed": 4, "rank": 0,
          "fingerprint": old[0].fingerprint}  # the earlier per-rank format converts exactly
    one.load_state_dict(v1)
    assert (one.epoch, one.position) == (0, 12)
    with pytest.raises(ValueError, match="seed"):
        make_loader(m, batch_size=2, size=SIZE, seed=5).load_state_dict(states[0])
    with pytest.raises(ValueError, match="fingerprint"):
        make_loader(mix(sets, epoch_size=30), batch_size=2, size=SIZE, seed=4).load_state_dict(states[0])
    with pytest.raises(ValueError, match="outside the epoch plan"):
        one.load_state_dict({**states[0], "samples": 25})


def test_remote_pipe_shards_are_fetched_into_the_cache(sets, tmp_path):
    data = json.loads((sets / "nyu-train.json").read_text())
    for s in data["shards"]:
        s["path"] = "pipe:cat " + str((sets / s["path"]).resolve())
    (tmp_path / "nyu-train.json").write_text(json.dumps(data))
    (tmp_path / "nyu-train.parquet").write_bytes((sets / "nyu-train.parquet").read_bytes())
    cache = tmp_path / "cache"
    remote = keys(make_loader(mix(tmp_path, ("nyu",), (1.0,), 8), batch_size=4, size=SIZE, cache_dir=str(cache)))
    local = keys(make_loader(mix(sets, ("nyu",), (1.0,), 8), batch_size=4, size=SIZE))
    assert remote == local and len(list(cache.glob("*.tar"))) == 3


def test_trainer_request_wires_to_make_loader(sets, tmp_path):
    """The trainer's adapter passes its LoaderRequest fields straight to make_loader."""
    from vortex_data.train.data import LoaderRequest, stream_loader

    cfg = tmp_path / "mix.toml"
    cfg.write_text(f'name = "t"\nepoch_size = 12\nmanifests_dir = "{sets}"\n'
                   '[[source]]\nname = "nyu"\nmanifest = "nyu-{split}.json"\nweight = 1\n'
                   '[[source]]\nname = "diode"\nmanifest = "diode-{split}.json"\nweight = 1\n')
    train = stream_loader(LoaderRequest(mixture=str(cfg), manifest=None, split="train", batch_size=4,
                                        image_size=SIZE, augment="default", seed=1))
    batches = list(train)
    assert len(batches) == 3 and batches[0]["rgb"].shape == (4, 3, *SIZE)
    ev = stream_loader(LoaderRequest(mixture=None, manifest=str(sets / "nyu-train.json"), split="train",
                                     batch_size=5, image_size=SIZE, augment=None, seed=0, training=False))
    got = [k for b in ev for k in b["key"]]
    assert got == [f"nyu/train/frame_{i:05d}" for i in range(13)]  # every sample once, in order, padding trimmed


def test_persistent_workers_open_each_shard_once_across_epochs_and_jumps_stay_exact(sets):
    m = mix(sets, ("nyu",), (1.0,), 12)  # 3 shards
    ref = make_loader(m, batch_size=2, size=SIZE, seed=3)
    want = [[b["key"] for b in ref] for _ in range(3)]
    loader = make_loader(m, batch_size=2, size=SIZE, seed=3, num_workers=2, profile=True)
    opens, got = {}, []
    for epoch in range(3):
        batches = list(loader)
        got.append([b["key"] for b in batches])
        for b in batches:  # opens so far in this epoch, per worker
            opens[(epoch, b["timing"]["worker"])] = b["timing"]["opens"]
    assert got == want
    assert sum(opens.values()) <= 2 * 3 and opens[(2, 0)] == opens[(2, 1)] == 0  # each worker opens each shard at most once, in epoch 0 only
    loader.set_epoch(1)  # a jump restarts the workers at the right place
    assert [b["key"] for b in loader] == want[1]
    it = iter(loader)  # epoch 2, abandoned after one batch, then continued from the state
    next(it)
    assert (loader.epoch, loader.position) == (2, 2)
    assert [b["key"] for b in loader] == want[2][1:]
    loader.close()


@pytest.mark.parametrize("workers", [0, 2])
def test_set_epoch_after_a_part_read_epoch_starts_that_epoch_from_its_start(sets, workers):
    """set_epoch(e + 1) after 3 of 10 batches of epoch e used to hand back the rest of epoch e
    (7 batches in-process; 4 with 2 workers, and the state then claimed epoch e + 1 complete)."""
    m = mix(sets, ("nyu",), (1.0,), 20)
    ref = make_loader(m, batch_size=2, size=SIZE, seed=5)
    want = [[b["key"] for b in ref] for _ in range(2)]
    assert len(want[1]) == 10 and want[0] != want[1]
    loader = make_loader(m, batch_size=2, size=SIZE, seed=5, num_workers=workers)
    it = iter(loader)
    for _ in range(3):
        next(it)
    loader.set_epoch(1)
    assert [b["key"] for b in loader] == want[1]
    assert (loader.state_dict()["epoch"], loader.state_dict()["samples"]) == (2, 0)
    it = iter(loader)  # the same within one epoch: set_epoch(e) restarts e
    next(it)
    loader.set_epoch(0)
    assert [b["key"] for b in loader] == want[0]
    loader.close()


def test_workers_ignore_sigterm_from_others_and_still_end_with_their_process(tmp_path):
    """Slurm's SIGTERM to every process must not kill loader workers; the interpreter's own exit
    (multiprocessing terminating its daemon children) still ends them, even for a loader nobody
    closed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    manifest = build(tmp_path, "nyu", 8, 4)
    code = (f"import sys\nfrom vortex_data.stream import make_loader\n"
            f"l = make_loader(manifest={str(manifest)!r}, batch_size=2, size=(32, 48), training=False, num_workers=2)\n"
            "it = iter(l)\nnext(it)\nnext(it)\n"  # a batch from each worker: both have started
            "print(' '.join(str(p.pid) for p in l._dl._iterator._workers), flush=True)\n"
            "sys.stdin.readline()\nnext(it)\nnext(it)\nprint('ok', flush=True)\n")  # exits with the loader alive
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    for pid in pids:
        os.kill(pid, signal.SIGTERM)  # from this process, not the workers' parent: ignored
    time.sleep(0.5)
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "ok"  # both workers still served their batches
    assert proc.wait(timeout=60) == 0  # and the exit did not wait forever on them
    assert "Traceback" not in proc.stderr.read()  # nor took their exit for a crash
    time.sleep(0.5)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
