"""dstune: automated tuning of PyTorch workloads, one PDCA iteration per run.

Public API for workload files and plugins.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .context import TuneContext
from .errors import UsageError
from .hookspecs import hookimpl
from .knobs import BatchPlan, Knob
from .workload_api import Workload, workload

__all__ = ["BatchPlan", "BestConfig", "Knob", "TuneContext", "UsageError", "Workload", "__version__", "apply", "best",
           "hookimpl", "workload"]


def __getattr__(name: str) -> object:
    """``best``, ``apply`` and ``BestConfig`` load on first use: they import torch, the CLI need not."""
    if name in ("BestConfig", "apply", "best"):
        from . import production

        return getattr(production, name)
    raise AttributeError(f"module 'dstune' has no attribute {name!r}")
