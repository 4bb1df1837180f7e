"""`vortex-data stats`: dataset statistics for manifests and a mixture (docs/stats.md).

``compute`` plans the work and assembles stats.json; ``scan`` is the one streaming pass over the
shards' pixels; ``numbers`` turns its counts into histograms and percentiles; ``phash`` finds
near-duplicate frames across sources (``hamming_index`` keeps that search from comparing every
pair); ``mixture_risk`` gives the probability of a label-less batch; ``report`` renders
report.html from stats.json alone.
"""

from .compute import add_parser, compute_stats, demo_stats, index_stats, plan_units, run, write_outputs

__all__ = ["add_parser", "compute_stats", "demo_stats", "index_stats", "plan_units", "run", "write_outputs"]
