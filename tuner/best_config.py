"""The applied configuration of a workload, as production and the read-only views see it.

Kept apart from :mod:`dstune.production` (which builds and runs the
workload) so that ``dstune show``, ``history`` and ``report`` read the store
without importing any of the run or trial machinery.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .store import Store


@dataclass
class BestConfig:
    """The applied configuration of a workload and where it came from."""

    workload: str
    config: dict[str, Any]
    context: dict[str, Any] | None = None
    source: str = ""
    applied_id: int | None = None
    iteration_id: int | None = None
    reason: str | None = None
    note: str | None = None
    applied_at: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    gpu_model: str | None = None  # the GPU model it was measured on (None: before dstune recorded it)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def best_from_row(row: Any, context: dict[str, Any] | None) -> BestConfig:
    return BestConfig(
        workload=row.workload.name, config=dict(row.config), context=context, source="store",
        applied_id=row.id, iteration_id=row.iteration_id or row.source_iteration_id, reason=row.reason,
        note=row.note, applied_at=row.applied_at.isoformat(), gpu_model=row.gpu_model,
        metrics={"samples_per_s": row.samples_per_s, "peak_memory_bytes": row.peak_memory_bytes,
                 "energy_per_sample_j": row.energy_per_sample_j},
    )


def applied_best(store: "Store", workload: str, gpu_model: str | None = None) -> BestConfig | None:
    """The applied configuration in ``store``, with the context of the iteration that measured it.

    With ``gpu_model``, the one measured on that model where there is one;
    else the newest of any model (better than the defaults on a new GPU,
    until dstune has tuned there).
    """
    row = (store.applied(workload, gpu_model) if gpu_model else None) or store.applied(workload)
    if row is None:
        return None
    source_id = row.iteration_id or row.source_iteration_id
    iteration = store.iteration(source_id) if source_id else None
    return best_from_row(row, dict(iteration.context) if iteration is not None else None)
