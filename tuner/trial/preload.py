"""Imported once by the fork server that trial processes are forked from.

It imports torch and torch._dynamo (which every optimizer imports on
construction: together the slow seconds of starting a trial) and nothing that
initialises CUDA, thread pools or a workload, so every forked trial starts
from the same clean state.  Python 3.12+ warns about forking a process with
more than one thread; importing torch starts one idle helper thread, which is
why that warning is silenced here, in the fork server only.
"""

from __future__ import annotations

import atexit
import os
import warnings

warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks.*", category=DeprecationWarning)

import torch  # noqa: E402,F401 - the point of this module
import torch._dynamo  # noqa: E402,F401

import dstune.plugin_manager  # noqa: E402,F401
import dstune.trial.measure  # noqa: E402,F401
import dstune.trial.process  # noqa: E402,F401

_SERVER_PID = os.getpid()


def _exit_at_once() -> None:
    """End the fork server without tearing torch down.

    It holds nothing to flush, and unloading torch's modules takes most of a
    second, during which the server keeps dstune's stdout open: a shell
    pipeline or ``subprocess.run`` on ``dstune run`` would wait that long after
    dstune itself has exited.  Registered after torch is imported, it runs
    before torch's own exit handlers; forked trials never run it (they leave
    through ``os._exit`` and carry another pid).
    """
    if os.getpid() == _SERVER_PID:
        os._exit(0)


atexit.register(_exit_at_once)
