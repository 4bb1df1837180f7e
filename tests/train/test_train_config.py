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


def test_manifest_wins_over_the_recipes_mixture_and_both_at_once_is_an_error(tmp_path) -> None:
    v6 = load_recipe("v6")
    cfg = build_config(v6, 1, {"manifest": "mine/nyu-train.json"})
    assert (cfg.mixture, cfg.manifest) == (None, "mine/nyu-train.json")  # the recipe's stage1 mixture used to win
    cfg = build_config({"common": {"manifest": "a.json"}}, 1, {"mixture": "stage2"})
    assert (cfg.mixture, cfg.manifest) == ("stage2", None)
    cfg = build_config({"common": {"mixture": "stage1"}, "stage2": {"manifest": "b.json"}}, 2, {})
    assert (cfg.mixture, cfg.manifest) == (None, "b.json")  # a stage section's manifest replaces [common]'s mixture
    with pytest.raises(ValueError, match=r"both mixture \(stage1\) and manifest \(x.json\) set given as overrides"):
        build_config(v6, 1, {"mixture": "stage1", "manifest": "x.json"})
    with pytest.raises(ValueError, match=r"mine.toml: both mixture \(m\) and manifest \(x.json\) set in \[stage1\]"):
        build_config({"stage1": {"mixture": "m", "manifest": "x.json"}}, 1, {}, recipe_name="mine.toml")


@pytest.mark.parametrize("command", ["train", "preflight"])
def test_manifest_and_mixture_flags_exclude_each_other(command, capsys) -> None:
    from vortex_data.cli import main

    with pytest.raises(SystemExit) as e:
        main([command, "--manifest", "x.json", "--mixture", "stage1"])
    assert e.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_train_runs_a_recipe_on_one_manifest(tmp_path, monkeypatch, capsys) -> None:
    """`vortex-data train --recipe v6 --manifest X` trains on X (it used to fail naming the recipe
    mixture's manifests/nyu-train.json, a file the user never mentioned)."""
    pytest.importorskip("timm")
    import json

    from loader_data import build
    from vortex_data.cli import main

    manifest = build(tmp_path / "data", "nyu", 4, 4)
    monkeypatch.chdir(tmp_path)  # no manifests/ here: the recipe's mixture could not load
    code = main(["train", "--recipe", "v6", "--stage", "1", "--manifest", str(manifest), "--run-dir", "run",
                 "--batch-size", "2", "--image-size", "32", "32", "--num-workers", "0", "--steps", "1",
                 "--profile-steps", "0", "--log-every", "1"])
    assert code == 0, capsys.readouterr().err
    log = [json.loads(x) for x in (tmp_path / "run/stage1/log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "step"] == [1]
    assert json.loads(json.dumps(log[-1]))["event"] == "done"
