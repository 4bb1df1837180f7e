"""The device phase's former name: :mod:`vortex_data.stream.photometric`, the same module object."""

import sys

from .stream import photometric as _photometric

sys.modules[__name__] = _photometric
