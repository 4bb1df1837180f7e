"""NYU Depth V2: the labelled .mat v7.3 converter and the official train/test split."""

from .converter import NyuConverter

__all__ = ["NyuConverter"]
