"""Imported once by the fork server that trial processes are forked from.

It imports torch and torch._dynamo (which every optimizer imports on
construction: together the slow seconds of starting a trial), then the
modules the workload file imports from installed packages
(:mod:`dstune.trial.workload_imports`), and nothing that initialises CUDA,
thread pools or a workload, so every forked trial starts from the same clean
state.  CUDA cannot be initialised in a process that forks CUDA users, so
while the workload's modules are imported torch refuses to initialise it (a
module that insists fails to preload, and its trials import it themselves),
and ``torch.cuda.is_available()`` asks NVML rather than the driver.

Python 3.12+ warns about forking a process with more than one thread;
importing torch starts one idle helper thread, which is why that warning is
silenced here, in the fork server only.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import sys
import warnings

warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks.*", category=DeprecationWarning)

import torch  # noqa: E402,F401 - the point of this module
import torch._dynamo  # noqa: E402,F401

import dstune.plugin_manager  # noqa: E402,F401
import dstune.trial.measure  # noqa: E402,F401
import dstune.trial.process  # noqa: E402,F401
from dstune.trial import workload_imports  # noqa: E402

_SERVER_PID = os.getpid()


def _refuse_cuda() -> None:
    raise RuntimeError("dstune's fork server imports a workload's modules without initialising CUDA")


def import_workload_modules(statements: list[tuple[str, list[str]]]) -> None:
    """Import each module with the names taken from it (a lazy package such as transformers imports its
    submodules on that access), CUDA refused throughout; what fails here, each trial imports itself.  A module
    after which CUDA is initialised all the same is kept in ``workload_imports.CUDA_BY``: no fork can use the GPU."""
    lazy_init, check = torch.cuda._lazy_init, os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    torch.cuda._lazy_init = _refuse_cuda
    os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    threads = _threads()
    try:
        for module, names in statements:
            try:
                imported = importlib.import_module(module)
                for name in names:
                    getattr(imported, name, None)
            except Exception:  # noqa: BLE001 - the trial imports it (and reports what fails) itself
                pass
            if workload_imports.CUDA_BY is None and torch.cuda.is_initialized():
                workload_imports.CUDA_BY = module
            if threads is not None and (now := _threads()) is not None and now > threads:
                _warn_threads(module, now - threads)
                threads = now
    finally:
        torch.cuda._lazy_init = lazy_init
        if check is None:
            os.environ.pop("PYTORCH_NVML_BASED_CUDA_CHECK", None)
        else:
            os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = check


def _threads() -> int | None:
    """The threads of this process, native ones included (Linux), or None where that cannot be read."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


def _warn_threads(module: str, started: int) -> None:
    """Fork copies one thread, and any lock another held at that moment stays held for ever in the child."""
    sys.stderr.write(
        f"[warning] importing {module} (imported by the workload file) started {started} thread(s) in dstune's fork "
        "server, which every trial is forked from: a trial forked while one of them holds a lock can hang. If "
        "trials time out, run with DSTUNE_PRELOAD=off, which leaves the workload's imports to each trial.\n")
    sys.stderr.flush()


def _preload_from_env() -> None:
    raw = os.environ.pop(workload_imports.PRELOAD_ENV, None)
    try:
        statements = json.loads(raw) if raw else []
    except ValueError:
        statements = []
    import_workload_modules([(str(module), [str(n) for n in names]) for module, names in statements])


_preload_from_env()


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
