"""dstune's store: SQLAlchemy models and queries; nothing outside this package builds SQL."""

from .database import StoreMissing, resolve_url
from .models import (
    SCHEMA_VERSION,
    AppliedRow,
    DaemonRow,
    EnvironmentRow,
    IterationRow,
    MeasurementRow,
    ScheduleRow,
    TrialRow,
    WorkloadRow,
)
from .queries import Store

__all__ = ["AppliedRow", "DaemonRow", "ScheduleRow", "MeasurementRow", "SCHEMA_VERSION", "EnvironmentRow", "IterationRow", "Store", "StoreMissing", "TrialRow", "WorkloadRow", "resolve_url"]
