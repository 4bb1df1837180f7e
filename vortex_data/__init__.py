"""vortex-data: depth datasets -> verified WebDataset shards -> a streaming mixture loader."""

__version__ = "0.1.0"
