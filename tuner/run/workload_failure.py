"""Telling a workload that fails by itself from configurations that fail.

When every trial of an iteration crashed, or had a NaN loss in its fp32
reference, with one and the same error, no knob is to blame: the workload
fails as written.  Advice about memory budgets or tolerances would mislead,
and re-measuring the incumbent in the check would only fail again.  The run
then says the workload's own error once, with the place in the user's file
it came from, and ends with :data:`dstune.errors.EXIT_WORKLOAD` so scripts
see that nothing could be tuned.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from dstune.trial.numerics import REFERENCE_NOT_FINITE

from .failures import signature

RAN = frozenset({"ok", "pruned"})  # a configuration that ran: the workload works, something else failed
FAILED = frozenset({"crash", "numerics"})
_FRAME = re.compile(r'File "(?P<path>[^"]+)", line (?P<line>\d+), in (?P<name>\S+)')


def where_in(error: str, workload_file: Path) -> str | None:
    """``file:line, in function`` of the innermost traceback frame in the workload's file, or None."""
    target = workload_file.resolve()
    found = None
    for match in _FRAME.finditer(error or ""):
        try:
            same = Path(match["path"]).resolve() == target
        except OSError:
            same = False
        if same:
            found = f"{workload_file.name}:{match['line']}, in {match['name']}"
    return found


def last_line(error: str) -> str:
    """The exception line of a traceback (the last line naming an error), else the error's last line."""
    lines = [line.strip() for line in (error or "").strip().splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b", line)]
    return (named or lines or ["(no message)"])[-1]


def workload_failure(rows: Sequence[Any], workload_file: Path) -> str | None:
    """The workload's own error when no trial ran and every one failed with one signature; else None."""
    ended = [r for r in rows if r.status not in ("running", "invalid", "predicted_oom", "interrupted", "stale")]
    if not ended or any(r.status in RAN for r in ended) or any(r.status not in FAILED for r in ended):
        return None
    signatures = {signature(r.error) for r in ended}
    if len(signatures) != 1:
        return None
    first = ended[0]
    place = where_in(first.error or "", workload_file)
    message = last_line(first.error or "")
    # The workload's own: raised with its code on the stack, or its loss NaN before any knob touched it. A plugin
    # failing in every trial is the plugin's fault, and is reported as such by the trials themselves.
    if place is None and not (first.status == "numerics" and message.startswith(REFERENCE_NOT_FINITE[:40])):
        return None
    return f"{message}" + (f" ({place})" if place else "")
