"""The package's own error types.

Every error the package raises on purpose for unusable input, settings or environment derives
from :class:`VortexError`; its message names the file (or URL, shard, key, member, setting) and
the problem. The command line prints such an error as one line and exits 2; any other exception
is a bug and keeps its traceback.
"""

from __future__ import annotations


class VortexError(Exception):
    """Unusable input, settings or environment; the message names what and why."""


class InputError(VortexError, ValueError):
    """A bad value: a file's content, an option or a setting (a ValueError, as before it existed)."""
