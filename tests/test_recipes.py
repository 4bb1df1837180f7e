"""One finder for the shipped recipes: mixtures and training recipes are found by name the same way,
and an unknown name is one error listing the shipped ones of the kind asked for."""

import pytest

from vortex_data.errors import InputError
from vortex_data.recipes import RecipeError, recipe_path, shipped
from vortex_data.stream.mixture import MixtureError, resolve_mixture
from vortex_data.train.config import load_recipe


def test_both_kinds_are_found_in_one_folder():
    assert shipped(mixtures=True) == ["stage1", "stage2", "stage2_raw"] and "v6" in shipped(mixtures=False)
    assert recipe_path("v6").parent == recipe_path("stage1").parent
    assert load_recipe("v6") and resolve_mixture("stage1", manifests_dir="/m").sources


def test_an_unknown_name_lists_what_is_shipped():
    with pytest.raises(RecipeError, match=r"no recipe 'v9'; shipped: .*stage1.*v6"):
        load_recipe("v9")
    with pytest.raises(MixtureError, match=r"no recipe 'stage9'; shipped: stage1, stage2, stage2_raw$"):
        resolve_mixture("stage9")
    assert issubclass(RecipeError, InputError)  # the CLI prints it as one line, exit 2


def test_stage2_raw_loads_and_every_batch_of_16_keeps_labelled_nyu_frames():
    """The weights docs/loader.md derives: 4 labelled + 12 raw per batch of 16, in every batch."""
    import numpy as np

    from vortex_data.stream.batching import by_fraction, plan_batched

    mix = resolve_mixture("stage2_raw", manifests_dir="/m")
    assert mix.batching == "stratified" and [s.name for s in mix.sources] == ["nyu", "nyu_raw"]
    assert mix.manifest_path(mix.sources[1], "train") == "/m/nyu-raw-train.json"
    weights = [s.weight for s in mix.sources]
    # 1,159 labelled (scenes80) against a BTS-sized raw set; the raw source has no labels.
    plan = plan_batched([1159, 24231], weights, mix.epoch_size, seed=0, epoch=0, batching=mix.batching,
                        batch_size=16, order=by_fraction([1.0, 0.0]))
    labelled = (plan.source[: mix.epoch_size // 16 * 16].reshape(-1, 16) == 0).sum(axis=1)
    assert labelled.min() == labelled.max() == 4
