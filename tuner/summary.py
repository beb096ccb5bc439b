"""What a run found, read back from the store: Pareto front, chosen config, speed-up.

Everything here comes from the database, not from memory, so what the user
sees at the end is what was recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .search import choose_max_throughput, pareto_front


@dataclass
class IterationSummary:
    iteration_id: int
    workload: str
    status_counts: dict[str, int]
    front: list[Any]
    chosen: Any | None
    default: Any | None
    default_config: dict[str, Any]
    memory_budget: int

    @property
    def speedup(self) -> float | None:
        if self.chosen is None or self.default is None or self.default.status != "ok":
            return None
        return self.chosen.samples_per_s / self.default.samples_per_s


def conclude(store: Any, iteration_id: int) -> IterationSummary:
    """Pick the fastest config that fits the memory budget; record it on the iteration."""
    iteration = store.iteration(iteration_id)
    ok = [t for t in store.trials(iteration_id, status="ok") if t.samples_per_s]
    budget = iteration.memory_budget_bytes or 0
    chosen = choose_max_throughput(ok, budget)
    default = next((t for t in store.trials(iteration_id) if t.seed_kind == "default"), None)
    store.finish_iteration(
        iteration_id, "completed", phase="done",
        chosen_trial_id=chosen.id if chosen else None,
        chosen_config=chosen.config if chosen else None,
    )
    return IterationSummary(
        iteration_id=iteration_id, workload=iteration.workload.name,
        status_counts=store.status_counts(iteration_id),
        front=pareto_front([t for t in ok if t.peak_memory_bytes is not None]),
        chosen=chosen, default=default, default_config=iteration.default_config, memory_budget=budget,
    )
