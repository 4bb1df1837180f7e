"""Batch composition (random / stratified / per_source): the plan's properties over whole epochs,
and the loader's guarantees (quotas, equal batches per rank, exact and elastic resume, worker
counts) in every mode."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from vortex_data.stream.batching import labelled_first, plan_batched, source_quotas, stratified_counts
from vortex_data.stream.mixture import BATCHING, Mixture, MixtureError, Source, load_mixture, quotas, source_draws
from vortex_data.stream import make_loader

from loader_data import build, write_mixture
from resume_helper import assert_resumes_exactly

SIZE = (32, 48)


def random_mixtures(n: int, seed: int = 0):
    """(sizes, weights, epoch_size, batch_size) drawn widely: 1..6 sources, tiny to dominant weights,
    epochs that are and are not multiples of the batch, sources smaller than their quota."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        k = int(rng.integers(1, 7))
        weights = list(rng.dirichlet(np.full(k, 0.6)) + 1e-3)
        b = int(rng.integers(1, 33))
        yield [int(v) for v in rng.integers(1, 400, k)], weights, int(rng.integers(b, 40 * b)), b


def blocks(plan, b):
    """The plan's full blocks of b positions as (blocks x b) source ids."""
    m = len(plan) // b
    return plan.source[:m * b].reshape(m, b)


@pytest.mark.parametrize("batching", BATCHING)
def test_every_mode_keeps_exact_quotas_and_the_random_plans_draws(batching):
    for sizes, weights, n, b in random_mixtures(150, seed=1):
        q = source_quotas(weights, n, batching, b)
        plan = plan_batched(sizes, weights, n, seed=3, epoch=2, batching=batching, batch_size=b)
        assert np.bincount(plan.source, minlength=len(sizes)).tolist() == q
        for s, size in enumerate(sizes):  # the random plan's draws of each source, only placed elsewhere
            mine = plan.source == s
            idx, rep = source_draws(size, q[s], 3, 2, s)
            assert sorted(zip(plan.index[mine].tolist(), plan.repeat[mine].tolist())) == sorted(zip(idx.tolist(), rep.tolist()))
        again = plan_batched(sizes, weights, n, seed=3, epoch=2, batching=batching, batch_size=b)
        assert np.array_equal(plan.source, again.source) and np.array_equal(plan.index, again.index)


def test_per_source_quotas_are_whole_batches_by_weight():
    for sizes, weights, n, b in random_mixtures(100, seed=2):
        q = source_quotas(weights, n, "per_source", b)
        assert q == [k * b for k in quotas(weights, n // b)]
    with pytest.raises(MixtureError, match="epoch_size >= batch size"):
        source_quotas([1.0], 3, "per_source", 4)


def test_stratified_blocks_hold_each_share_exactly_over_whole_epochs():
    for sizes, weights, n, b in random_mixtures(200, seed=3):
        for epoch in range(3):
            plan = plan_batched(sizes, weights, n, seed=9, epoch=epoch, batching="stratified", batch_size=b)
            full = blocks(plan, b)
            if not len(full):
                continue
            counts = np.stack([np.bincount(row, minlength=len(sizes)) for row in full])
            q = np.asarray(source_quotas(weights, n))
            _, tail = stratified_counts(q, b, range(len(sizes)))
            share = (q - tail) / len(full)  # each source's draws per full block
            assert (counts >= np.floor(share)).all() and (counts <= np.ceil(share)).all(), (weights, n, b)
            if n % b == 0:  # no tail: the share is B x quota / epoch exactly
                assert np.allclose(share, b * q / n)


def test_stratified_makes_a_labelless_batch_impossible_when_labelled_share_is_at_least_1_over_b():
    """Property over whole epochs (not sampling): sources 0..k-1 labelled, listed first; whenever the
    labelled sources' quotas reach N / B, no full block lacks one. Below 1/B some block must."""
    rng = np.random.default_rng(4)
    checked = below = 0
    for _ in range(400):
        s = int(rng.integers(2, 7))
        lab = int(rng.integers(1, s))
        b = int(rng.integers(2, 33))
        n = int(rng.integers(b, 30 * b))
        weights = list(rng.dirichlet(np.full(s, 0.5)) + 1e-3)
        order = list(rng.permutation(lab)) + list(lab + rng.permutation(s - lab))  # labelled first, any inner order
        q = source_quotas(weights, n)
        labelled_share = sum(q[:lab]) / n
        sizes = [int(v) for v in rng.integers(1, 300, s)]
        for epoch in range(2):
            plan = plan_batched(sizes, weights, n, seed=epoch, epoch=epoch, batching="stratified", batch_size=b,
                                order=order)
            has_label = (blocks(plan, b) < lab).any(axis=1)
            if labelled_share >= 1 / b:
                checked += 1
                assert has_label.all(), (weights, n, b, lab)
            elif sum(q[:lab]) < n // b:
                below += 1
                assert not has_label.all()  # fewer labelled draws than full blocks: some block has none
    assert checked > 300 and below > 5


def test_random_batching_does_leave_labelless_batches():
    """The same kind of mixture under the old random plan: label-less batches happen (what stratified removes)."""
    sizes, weights, n, b = [500, 500], [0.1, 0.9], 16000, 16  # labelled share 0.1 >= 1/16
    empty = sum(int((~(blocks(plan_batched(sizes, weights, n, 0, e), b) == 0).any(axis=1)).sum()) for e in range(3))
    assert empty > 100
    strat = [blocks(plan_batched(sizes, weights, n, 0, e, "stratified", b), b) for e in range(3)]
    assert all(((blk == 0).sum(axis=1) >= 1).all() for blk in strat)


def test_per_source_blocks_are_single_source_and_spread_by_weight():
    for sizes, weights, n, b in random_mixtures(150, seed=5):
        plan = plan_batched(sizes, weights, n, seed=1, epoch=0, batching="per_source", batch_size=b)
        assert len(plan) % b == 0
        full = blocks(plan, b)
        assert (full == full[:, :1]).all()
        who = full[:, 0]
        k = np.bincount(who, minlength=len(sizes))
        for s in np.flatnonzero(k):  # systematic interleave: gaps between a source's batches stay near 1/share
            gaps = np.diff(np.flatnonzero(who == s))
            assert gaps.size == 0 or gaps.max() <= np.ceil(len(who) / k[s]) + len(sizes), (s, gaps)


def test_bad_batching_named():
    with pytest.raises(MixtureError, match="batching"):
        plan_batched([3], [1.0], 4, 0, 0, batching="shuffled")
    with pytest.raises(MixtureError, match="batching"):
        Mixture((Source("a", "a.json", 1.0),), 4, batching="grouped")


# ---------------------------------------------------------------- through the loader


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("batching")
    build(root, "nyu", 13, 5)                   # labelled
    build(root, "diode", 7, 3, with_seg=False)  # label-less
    build(root, "sunrgbd", 5, 2)                # labelled
    return root / "manifests"


def mix(mdir, batching="random", epoch_size=24):
    return Mixture(tuple(Source(n, f"{n}-{{split}}.json", w) for n, w in
                         (("diode", 0.55), ("nyu", 0.25), ("sunrgbd", 0.2))), epoch_size, "t", mdir, batching)


def test_toml_key_and_labelled_sources_first(sets, tmp_path):
    path = write_mixture(tmp_path / "m.toml", sets, 24, (("diode", 0.5), ("nyu", 0.5)))
    path.write_text('batching = "stratified"\n' + path.read_text())
    assert load_mixture(path).batching == "stratified"
    lo = make_loader(str(path), batch_size=4, size=SIZE)
    assert lo.spec.batching == "stratified" and lo.spec.strata_order == (1, 0)  # nyu (labelled) first
    assert make_loader(str(path), batch_size=4, size=SIZE, batching="random").spec.batching == "random"
    assert make_loader(str(path), split="train", training=False, batch_size=4, size=SIZE).spec.batching == "random"
    assert labelled_first([str(sets / f"{n}-train.json") for n in ("diode", "nyu", "sunrgbd")]) == (1, 2, 0)
    path.write_text(path.read_text().replace('"stratified"', '"by_source"'))
    with pytest.raises(MixtureError, match=f"{path}.*batching"):
        load_mixture(path)


@pytest.mark.parametrize("batching", BATCHING)
def test_resumes_exactly_in_every_mode(sets, batching):
    kw = dict(batch_size=4, size=SIZE, seed=3, batching=batching)
    m = mix(sets)
    # 6 batches per epoch: two epochs and a half, crash, the rest with another worker count.
    state, before, after = assert_resumes_exactly(lambda: make_loader(m, num_workers=2, **kw), 6 + 2, 5,
                                                  make_resumed=lambda: make_loader(m, num_workers=0, **kw))
    assert (state["epoch"], state["samples"]) == (1, 8)
    per_epoch = Counter(int(d) for b in before[:6] for d in b["dataset"])
    assert [per_epoch[i] for i in range(3)] == source_quotas([0.55, 0.25, 0.2], 24, batching, 4)
    if batching == "stratified":  # share x 4 = 2.2 / 1.0 / 0.8 per batch
        for b in before + after:
            c = Counter(int(d) for d in b["dataset"])
            assert c[0] in (2, 3) and c[1] == 1 and c[2] in (0, 1) and bool(b["has_seg"].any())
    if batching == "per_source":
        assert all(len(set(b["dataset"].tolist())) == 1 for b in before + after)


@pytest.mark.parametrize("batching", BATCHING)
def test_elastic_resume_at_another_world_size_keeps_composition(sets, batching):
    m = mix(sets, epoch_size=48)
    ref = [k for b in make_loader(m, batch_size=4, size=SIZE, seed=2, batching=batching) for k in b["key"]]
    old = [make_loader(m, batch_size=4, size=SIZE, seed=2, rank=r, world_size=2, batching=batching) for r in (0, 1)]
    counts = [len(old[0]), len(old[1])]
    assert counts[0] == counts[1] == 6
    for lo in old:
        it = iter(lo)
        next(it), next(it)
        lo.close()
    state = old[0].state_dict()
    assert state["samples"] == 16
    new = [make_loader(m, batch_size=4, size=SIZE, seed=2, rank=r, world_size=3, num_workers=r % 2, batching=batching)
           for r in range(3)]
    for lo in new:
        lo.load_state_dict(state)
    per_rank = [list(lo) for lo in new]
    assert len({len(p) for p in per_rank}) == 1  # equal batch counts on every rank
    rest = [k for step in zip(*per_rank) for b in step for k in b["key"]]
    assert rest == ref[16:16 + len(rest)] and len(rest) == 48 - 16 - (48 - 16) % 12
    for b in (b for p in per_rank for b in p):
        c = Counter(int(d) for d in b["dataset"])
        if batching == "stratified":
            assert c[1] == 1 and c[0] in (2, 3) and bool(b["has_seg"].any())
        if batching == "per_source":
            assert len(c) == 1


def test_stratified_refuses_a_mid_epoch_resume_at_another_batch_size(sets):
    m = mix(sets, batching="stratified")
    lo = make_loader(m, batch_size=4, size=SIZE)
    next(iter(lo))
    state = lo.state_dict()
    with pytest.raises(ValueError, match="same batch size"):
        make_loader(m, batch_size=3, size=SIZE).load_state_dict(state)
    make_loader(m, batch_size=4, size=SIZE, rank=1, world_size=2).load_state_dict(state)  # world size may change
    random_state = make_loader(mix(sets), batch_size=4, size=SIZE).state_dict()
    with pytest.raises(ValueError, match="fingerprint"):  # another composition is another plan
        make_loader(m, batch_size=4, size=SIZE).load_state_dict(random_state)


def test_same_batches_whatever_the_worker_count(sets):
    m = mix(sets, batching="stratified")
    runs = [[b["key"] for b in make_loader(m, batch_size=4, size=SIZE, num_workers=w)] for w in (0, 1, 2)]
    assert runs[0] == runs[1] == runs[2]
    imgs = [torch.cat([b["rgb"] for b in make_loader(m, batch_size=4, size=SIZE, num_workers=w)]) for w in (0, 2)]
    assert torch.equal(imgs[0], imgs[1])


def test_shipped_stage1_recipe_is_stratified_and_every_batch_of_16_carries_labels():
    """The recipe's weights over the converters' train sizes (SUN RGB-D 4,490 without NYUdata,
    DIODE indoor 8,574, NYU 1,159): every batch of 16 in several epochs holds 6-7 SUN RGB-D,
    6-7 DIODE and 3-4 NYU draws, i.e. 9-10 labelled samples."""
    from vortex_data.recipes import recipe_path

    recipe = load_mixture(recipe_path("stage1"))
    assert recipe.batching == "stratified" and [s.name for s in recipe.sources] == ["sunrgbd", "diode_indoor", "nyu"]
    weights = [s.weight for s in recipe.sources]
    order = (0, 2, 1)  # what labelled_first gives: SUN RGB-D and NYU labelled, DIODE not
    for epoch in range(4):
        plan = plan_batched([4490, 8574, 1159], weights, recipe.epoch_size, 0, epoch, "stratified", 16, order)
        counts = np.stack([np.bincount(row, minlength=3) for row in blocks(plan, 16)])
        assert len(counts) == recipe.epoch_size // 16
        assert set(counts[:, 0]) == {6, 7} and set(counts[:, 1]) == {6, 7} and set(counts[:, 2]) == {3, 4}
        assert set(counts[:, 0] + counts[:, 2]) == {9, 10}


def test_stratified_order_comes_from_the_index_not_the_manifests_total(sets, tmp_path):
    """Manifests written before ``totals.labelled`` existed (same schema version): the loader's seat
    order comes from the index's flags, the one function preflight and stats use, so the labelled
    sources (1/8 + 1/8 of a batch of 4) still share every batch. Ordered by the missing total they
    sorted as the mixture lists them (nyu, diode, sunrgbd, diode) and half the batches had no label."""
    import json
    import shutil

    from vortex_data.stream.batching import labelled_order, read_labelled_flags

    old = sets.parent / "manifests_without_labelled"  # beside the others: shard paths stay valid
    if not old.exists():
        old.mkdir()
        for p in sets.iterdir():
            shutil.copy(p, old / p.name)
            if p.suffix == ".json":
                m = json.loads(p.read_text())
                del m["totals"]["labelled"]
                (old / p.name).write_text(json.dumps(m))
    m = Mixture(tuple(Source(n, f"{f}-{{split}}.json", w) for n, f, w in
                      (("nyu", "nyu", 0.125), ("diode", "diode", 0.375), ("sunrgbd", "sunrgbd", 0.125),
                       ("diode2", "diode", 0.375))), 32, "t", old, "stratified")
    lo = make_loader(m, batch_size=4, size=SIZE, seed=1)
    flags = [read_labelled_flags(str(old / f"{f}-train.json")) for f in ("nyu", "diode", "sunrgbd", "diode")]
    assert lo.spec.strata_order == labelled_order(flags) == (0, 2, 1, 3)
    batches = list(lo)
    assert len(batches) == 8 and all(bool(b["has_seg"].any()) for b in batches)


def test_per_source_source_smaller_than_a_batch_is_named_at_start(sets, caplog):
    """sunrgbd has 5 samples (diode 7): each of its per_source batches of 8 holds them 1.6 times on average;
    the loader says so when it is made (the rule preflight and stats use), and not for stratified."""
    import logging

    from vortex_data.stream.batching import repeats_in_batch

    assert repeats_in_batch(["a", "b"], [5, 13], "per_source", 8) == {"a": 1.6}
    assert repeats_in_batch(["a", "b"], [5, 13], "stratified", 8) == {}
    with caplog.at_level(logging.WARNING, logger="vortex_data"):
        lo = make_loader(mix(sets, "per_source", epoch_size=40), batch_size=8, size=SIZE)
    said = [r.getMessage() for r in caplog.records if "per_source" in r.getMessage()]
    assert len(said) == 1 and "sunrgbd each sample 1.6 times" in said[0] and "diode each sample 1.14 times" in said[0]
    assert "nyu" not in said[0]  # 13 samples: a batch of 8 holds each at most once
    samples = [k for b in lo for k in b["key"] if k.startswith("sunrgbd")]
    assert len(samples) == 8 and len(set(samples)) == 5  # what the warning says: repeats inside the batch
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vortex_data"):
        make_loader(mix(sets, "stratified"), batch_size=8, size=SIZE)
    assert not any("per_source" in r.getMessage() for r in caplog.records)
