"""Training configuration: recipe sections, overrides and errors that name the recipe."""

from __future__ import annotations

import pytest

from vortex_data.train.config import build_config, load_recipe


def test_stage_section_overrides_common_and_flags_override_both() -> None:
    recipe = {"common": {"batch_size": 4, "steps": 10}, "stage2": {"steps": 20}}
    cfg = build_config(recipe, 2, {"batch_size": 2, "seed": None})
    assert (cfg.stage, cfg.steps, cfg.batch_size, cfg.seed) == (2, 20, 2, 0)


def test_unknown_recipe_setting_names_recipe_and_section(tmp_path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text("[stage1]\nbogus = 1\n")
    with pytest.raises(ValueError, match=r"mine\.toml: unknown training settings in \[stage1\]: \['bogus'\]"):
        build_config(load_recipe(str(path)), 1, {}, recipe_name=str(path))
