"""dstune: automated tuning of PyTorch workloads, one PDCA iteration per run.

Public API for workload files and plugins.
"""

from __future__ import annotations

from .context import TuneContext
from .errors import UsageError
from .hookspecs import hookimpl
from .knobs import BatchPlan, Knob
from .version import __version__
from .workload_api import Workload, workload

__all__ = ["BatchPlan", "BestConfig", "Knob", "TuneContext", "UsageError", "Workload", "__version__", "apply", "best",
           "hookimpl", "workload"]


def __getattr__(name: str) -> object:
    """``best``, ``apply`` and ``BestConfig`` load on first use: they import torch, the CLI need not."""
    if name == "BestConfig":
        from .best_config import BestConfig

        return BestConfig
    if name in ("apply", "best"):
        from . import production

        return getattr(production, name)
    raise AttributeError(f"module 'dstune' has no attribute {name!r}")
