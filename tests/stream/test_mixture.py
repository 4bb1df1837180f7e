import json
from collections import Counter

import numpy as np
import pytest

from vortex_data.recipes import recipe_path
from vortex_data.stream.mixture import (MixtureError, load_mixture, plan_epoch, quotas, read_source_index,
                                        source_draws)

from loader_data import build


def test_quotas_are_exact_largest_remainder():
    assert quotas([1, 1, 1], 10) == [4, 3, 3]  # tie on remainder goes to the first source
    assert quotas([0.45, 0.25, 0.30], 40000) == [18000, 10000, 12000]
    q = quotas([0.2, 0.3, 0.5, 0.7], 997)
    assert sum(q) == 997
    exact = np.array([0.2, 0.3, 0.5, 0.7]) / 1.7 * 997
    assert np.all(np.abs(np.array(q) - exact) < 1)
    with pytest.raises(MixtureError):
        quotas([1, 0], 10)


def test_plan_meets_quotas_every_epoch_and_reshuffles():
    sizes, weights = [50, 7, 20], [0.5, 0.3, 0.2]
    q = quotas(weights, 60)
    orders = []
    for epoch in range(3):
        plan = plan_epoch(sizes, weights, 60, seed=1, epoch=epoch)
        assert len(plan) == 60
        assert [int((plan.source == s).sum()) for s in range(3)] == q
        orders.append(plan.source.tolist())
    assert orders[0] != orders[1] != orders[2]
    again = plan_epoch(sizes, weights, 60, seed=1, epoch=2)
    assert again.source.tolist() == orders[2] and np.array_equal(again.index, plan.index)


def test_no_repeat_unless_cycled_and_cycles_are_whole_permutations():
    plan = plan_epoch([50, 7, 20], [0.5, 0.3, 0.2], 60, seed=3, epoch=0)
    for s, size in enumerate([50, 7, 20]):
        picks = plan.index[plan.source == s]
        counts = Counter(picks.tolist())
        if len(picks) <= size:
            assert max(counts.values()) == 1
        else:  # cycled: every sample floor(q/n) or ceil(q/n) times
            assert set(counts.values()) <= {len(picks) // size, -(-len(picks) // size)}
    idx, rep = source_draws(7, 18, seed=0, epoch=0, source=1)
    assert sorted(idx[:7]) == list(range(7)) and sorted(idx[7:14]) == list(range(7))
    assert rep.tolist() == [0] * 7 + [1] * 7 + [2] * 4
    assert not np.array_equal(idx[:7], idx[7:14])  # each pass reshuffled


def test_load_mixture_toml_resolves_manifests_and_recipes_parse(tmp_path):
    cfg = tmp_path / "mix.toml"
    cfg.write_text('name = "m"\nepoch_size = 10\n[[source]]\nname = "a"\nmanifest = "a-{split}.json"\nweight = 2\n')
    mix = load_mixture(cfg, manifests_dir=tmp_path / "manifests")
    assert mix.manifest_path(mix.sources[0], "val") == str(tmp_path / "manifests" / "a-val.json")
    for name in ("stage1", "stage2"):
        m = load_mixture(recipe_path(name), manifests_dir="/m")
        assert m.epoch_size > 0 and all(s.manifest.endswith("-{split}.json") for s in m.sources)
    bad = tmp_path / "bad.toml"
    bad.write_text("epoch_size = 5\n")
    with pytest.raises(MixtureError, match="bad.toml"):
        load_mixture(bad)


def test_source_index_from_parquet_matches_tar_listing(tmp_path):
    manifest = build(tmp_path, "nyu", 9, 4)
    ix = read_source_index(str(manifest))
    assert len(ix) == 9 and ix.shard_of.tolist() == [0] * 4 + [1] * 4 + [2]
    data = json.loads(manifest.read_text())
    del data["index"]
    bare = tmp_path / "manifests" / "bare.json"
    bare.write_text(json.dumps(data))
    ix2 = read_source_index(str(bare))
    assert ix2.keys == ix.keys and ix2.shard_of.tolist() == ix.shard_of.tolist()
    with pytest.raises(MixtureError, match="key_pattern"):
        read_source_index(str(manifest), key_pattern="nothing-matches")
    with pytest.raises(MixtureError, match="missing.json"):
        read_source_index(str(tmp_path / "missing.json"))


def test_unknown_recipe_lists_only_mixture_recipes():
    from vortex_data.stream.mixture import MixtureError, resolve_mixture
    with pytest.raises(MixtureError, match=r"no recipe 'stage9'; shipped: stage1, stage2, stage2_raw$"):
        resolve_mixture("stage9")


def test_source_draws_are_whole_fresh_permutations_cut_to_the_quota():
    # The documented rule, written the obvious way: plans (and so resumed checkpoints) must not
    # change when source_draws saves memory.
    from vortex_data.stream.mixture import rng_for, source_draws

    for size, quota in ((1, 3), (7, 0), (7, 5), (7, 7), (7, 20), (1000, 999), (1000, 2500)):
        passes = -(-quota // size)
        want = np.concatenate([rng_for(4, "draw", 2, 1, p).permutation(size) for p in range(passes)] or [[]])[:quota]
        idx, rep = source_draws(size, quota, 4, 2, 1)
        assert idx.tolist() == want.tolist() and rep.tolist() == (np.arange(quota) // size).tolist()
