"""torch.compile of the training step: which mode runs, and checkpoints that do not depend on it.

What is compiled is the module that maps a finished batch to the loss (network, every loss term,
Kendall weighting: :class:`~vortex_data.train.losses.MultiTaskLoss`), wrapped in DDP first when
there are several ranks (DDP's own compiled-module support splits the graph at gradient-bucket
boundaries). Backward is compiled with it (AOTAutograd); the optimiser step is not (fused AdamW
on CUDA is already one kernel per group). Shapes are static (``dynamic=False``): the loader
drops the last partial batch, so every step has the same shapes and nothing recompiles.

A compiled module's own ``state_dict`` prefixes every key with ``_orig_mod.``; the trainer saves
the plain module's, so checkpoints are the same whatever the mode, and :func:`plain_state_dict`
strips the prefix from a state dict saved from a compiled module by other code.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

COMPILED_PREFIX = "_orig_mod."


def resolve_mode(mode: str, device_type: str) -> str:
    """The mode that runs: ``auto`` is ``default`` on CUDA and ``none`` elsewhere (on a CPU
    inductor's C++ build of EfficientViT-B1 costs minutes for a step that gains little)."""
    if mode == "auto":
        return "default" if device_type == "cuda" else "none"
    return mode


def compile_model(model: nn.Module, mode: str, backend: str = "inductor") -> nn.Module:
    """``model`` itself for ``none``; otherwise torch.compile of it (lazy: the first call compiles)."""
    if mode == "none":
        return model
    import torch

    return torch.compile(model, mode=None if mode == "default" else mode, dynamic=False, backend=backend)


def plain_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with every ``_orig_mod.`` (torch.compile's wrapper) taken out of its keys."""
    return {k.replace(COMPILED_PREFIX, ""): v for k, v in state.items()}
