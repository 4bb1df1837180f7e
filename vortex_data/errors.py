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


EXIT_INTERRUPTED = 130
"""128 + SIGINT: the exit status a shell reports for a command ended by Ctrl-C."""


class Interrupted(VortexError):
    """Ctrl-C (SIGINT) stopped a command; the message says what was kept and what a rerun does.
    The command line prints it as one line and exits 130 (128 + SIGINT, as a shell reports it)."""
