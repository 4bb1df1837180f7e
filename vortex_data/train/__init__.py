"""Lean trainer: EfficientViT-B1 metric depth + 6-class segmentation (needs the ``[train]`` extra).

Entry points for the package CLI: :func:`add_train_parser`, :func:`add_eval_parser` (each sets
``func`` on its subparser to :func:`run_train` / :func:`run_eval`).
"""

from vortex_data.train.commands import add_eval_parser, add_train_parser, run_eval, run_train

__all__ = ["add_train_parser", "add_eval_parser", "run_train", "run_eval"]
