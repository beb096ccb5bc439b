"""Two facts about processes that several parts of dstune need: is a pid alive, and dying with one's parent."""

from __future__ import annotations

import os
import signal
import sys


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a zombie counts until it is reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return True


def die_with_parent(sig: signal.Signals = signal.SIGKILL) -> None:
    """Ask Linux to send ``sig`` to the calling process when its parent dies (PR_SET_PDEATHSIG).

    Trials use SIGKILL, so a killed dstune leaves none behind; a daemon's
    runs use SIGTERM, so they record themselves as interrupted.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(sig))
