"""What an iteration found and decided, read back from the store.

Everything here comes from the database, not from memory, so what the user
sees at the end of a run, in ``dstune show`` and in ``dstune history`` is
what was recorded.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from .search import pareto_front


@dataclass
class IterationSummary:
    iteration: Any
    status_counts: dict[str, int]
    front: list[Any]
    challenger: Any | None
    measurements: list[Any]

    @property
    def iteration_id(self) -> int:
        return int(self.iteration.id)

    @property
    def workload(self) -> str:
        return str(self.iteration.workload.name)

    @property
    def memory_budget(self) -> int:
        return int(self.iteration.memory_budget_bytes or 0)

    @property
    def default_config(self) -> dict[str, Any]:
        return dict(self.iteration.default_config or {})

    def median(self, role: str) -> float | None:
        values = [m.samples_per_s for m in self.measurements if m.role == role and m.samples_per_s]
        return statistics.median(values) if values else None


def summarize(store: Any, iteration_id: int) -> IterationSummary:
    iteration = store.iteration(iteration_id)
    ok = [t for t in store.trials(iteration_id, status="ok") if t.samples_per_s]
    challenger = next((t for t in ok if t.id == iteration.chosen_trial_id), None)
    return IterationSummary(
        iteration=iteration, status_counts=store.status_counts(iteration_id),
        front=pareto_front([t for t in ok if t.peak_memory_bytes is not None]),
        challenger=challenger, measurements=list(store.measurements(iteration_id)),
    )
