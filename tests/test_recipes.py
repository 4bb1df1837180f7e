"""One finder for the shipped recipes: mixtures and training recipes are found by name the same way,
and an unknown name is one error listing the shipped ones of the kind asked for."""

import pytest

from vortex_data.errors import InputError
from vortex_data.recipes import RecipeError, recipe_path, shipped
from vortex_data.stream.mixture import MixtureError, resolve_mixture
from vortex_data.train.config import load_recipe


def test_both_kinds_are_found_in_one_folder():
    assert shipped(mixtures=True) == ["stage1", "stage2"] and "v6" in shipped(mixtures=False)
    assert recipe_path("v6").parent == recipe_path("stage1").parent
    assert load_recipe("v6") and resolve_mixture("stage1", manifests_dir="/m").sources


def test_an_unknown_name_lists_what_is_shipped():
    with pytest.raises(RecipeError, match=r"no recipe 'v9'; shipped: .*stage1.*v6"):
        load_recipe("v9")
    with pytest.raises(MixtureError, match=r"no recipe 'stage9'; shipped: stage1, stage2$"):
        resolve_mixture("stage9")
    assert issubclass(RecipeError, InputError)  # the CLI prints it as one line, exit 2
