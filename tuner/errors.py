"""The one exception type for problems a user can fix.

The CLI prints a :class:`UsageError` as a paragraph, without a traceback, and
exits with status 2.  Bugs in dstune itself still raise ordinary exceptions.
"""

from __future__ import annotations


class UsageError(Exception):
    """Bad input: a file, an option value or a configuration the user can fix.

    The message names the thing, the value and what to do about it.
    """
