"""Lean trainer: EfficientViT-B1 metric depth + 6-class segmentation (needs the ``[train]`` extra).

Entry points for the package CLI: :func:`add_train_parser`, :func:`add_eval_parser` (each sets
``func`` on its subparser to :func:`run_train` / :func:`run_eval`).
"""
