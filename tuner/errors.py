"""The one exception type for problems a user can fix.

The CLI prints a :class:`UsageError` as a paragraph, without a traceback, and
exits with status 2.  Bugs in dstune itself still raise ordinary exceptions.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad input: a file, an option value or a configuration the user can fix.

    The message names the thing, the value and what to do about it.
    """


# Exit statuses of the ``dstune`` commands (documented in the README).
EXIT_OK = 0
EXIT_USAGE = 2  # bad input: nothing was run
EXIT_REGRESSION = 3  # `run --fail-on-regression` found the incumbent slower than before
EXIT_WORKLOAD = 4  # `run`: every trial failed with the workload's own error; nothing could be tuned
EXIT_DEFERRED = 75  # the device stayed locked or busy too long: try again later (EX_TEMPFAIL)
EXIT_INTERRUPTED = 130  # SIGINT or SIGTERM: what had finished is recorded
