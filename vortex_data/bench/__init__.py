"""Benchmarks that print figures: ``vortex-data bench-loader`` (``loader``) and the real-photo
benchmark set it builds with ``--photos`` (``photos``). Nothing in the library imports them."""
