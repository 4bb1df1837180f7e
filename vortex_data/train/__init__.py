"""Lean trainer: EfficientViT-B1 metric depth + 6-class segmentation (needs the ``[train]`` extra).

Entry points for the package CLI: :func:`add_train_parser`, :func:`add_eval_parser` (each sets
``func`` on its subparser to :func:`run_train` / :func:`run_eval`), in
:mod:`vortex_data.train.commands`. They are loaded on first use, so importing one part of the
trainer (``vortex_data.train.losses``) does not load the command-line wiring.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["add_train_parser", "add_eval_parser", "run_train", "run_eval"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("vortex_data.train.commands"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
