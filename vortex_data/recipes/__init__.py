"""The shipped recipes, one TOML file each: mixtures (files with ``[[source]]`` tables, read by
:func:`vortex_data.stream.mixture.load_mixture`) and training recipes (``[common]``/``[stageN]``,
read by :func:`vortex_data.train.config.load_recipe`). The one place that finds them by name."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError

HERE = Path(__file__).parent


class RecipeError(InputError):
    """No shipped recipe of that name; the message lists the shipped ones of the kind asked for."""


def shipped(mixtures: bool | None = None) -> list[str]:
    """Names of the shipped recipes: all, only the mixtures (True) or only the training recipes (False)."""
    return sorted(p.stem for p in HERE.glob("*.toml")
                  if mixtures is None or ("[[source]]" in p.read_text()) == mixtures)


def recipe_path(name: str, mixtures: bool | None = None) -> Path:
    """A shipped recipe's file by name (``stage1``, ``v6``); ``mixtures`` only chooses which names
    an error lists."""
    path = HERE / f"{name}.toml"
    if not path.is_file():
        raise RecipeError(f"no recipe {name!r}; shipped: {', '.join(shipped(mixtures))}")
    return path
