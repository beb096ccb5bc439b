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

__all__ = ["BatchPlan", "Knob", "TuneContext", "UsageError", "Workload", "__version__", "hookimpl", "workload"]
