"""What every process of an iteration has measured, folded from the trial rows in the database.

Every process taking part in the Do phase (each slot of ``dstune run``, each
``dstune worker``) folds every process's ended trials into one of these, so
all of them skip what was measured anywhere, prune against the same best,
plan the check from the same costs and ban the same crashing values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dstune.knobs import Config, config_key

from .budget import Budget
from .failures import Ban, FailureMemory
from .memory_model import MemoryModel
from .search import CostAwareSchedule
from .selection import fits

NOT_REMEMBERED = frozenset({"running", "stale", "interrupted"})  # say nothing about the configuration itself
NOT_RUN = frozenset({"invalid", "predicted_oom"})  # refused before a process started: not trials


@dataclass
class Findings:
    """The iteration's trials as one process knows them: outcomes by configuration, the best, the crashes."""

    schedule: CostAwareSchedule
    budget: Budget
    memory_budget: int
    max_latency_s: float | None
    failures: FailureMemory
    memory: MemoryModel | None = None  # corrected by every trial's peak and out-of-memory
    seen: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)  # config key -> (status, metrics)
    running: set[str] = field(default_factory=set)  # configurations some slot of some process is measuring now
    folded: set[int] = field(default_factory=set)  # trial row ids taken in
    successes: list[tuple[Config, float]] = field(default_factory=list)  # within the budgets, with samples/s
    best: float | None = None
    best_key: str = ""
    best_config: Config | None = None
    finished: int = 0  # trials of every process that have ended (invalid configurations are not trials)
    durations: dict[str, float] = field(default_factory=dict)  # what each successful trial took, by config key

    def fold(self, row: Any) -> tuple[list[Ban], str | None]:
        """Take in one ended trial's row; the bans its crash justifies (usually none), and what it taught the
        memory model (a sentence, or None)."""
        self.folded.add(row.id)
        key, metrics = config_key(row.config), dict(row.metrics or {})
        if row.status not in NOT_REMEMBERED:
            self.seen[key] = (row.status, metrics)
        if row.status in NOT_RUN:
            return [], None
        bans = self.failures.fold(row.status, row.config, row.number, row.error)
        lesson = self.memory.observe(row.config, row.status, metrics) if self.memory is not None else None
        self._fold_ran(row, key, metrics)
        return bans, lesson

    def _fold_ran(self, row: Any, key: str, metrics: dict[str, Any]) -> None:
        """Count a trial that ran: its duration, and its throughput when it succeeded within the budgets."""
        self.finished += 1
        duration = float(row.duration_s or 0.0)
        self.schedule.record(row.config, duration)
        if row.status != "ok":
            self.budget.record_failure(key, duration)
            return
        self.durations[key] = duration
        self.budget.record_success(key, duration, float(metrics.get("first_step_s") or 0.0),
                                         self.schedule.is_costly(row.config))
        if fits(metrics.get("peak_memory_bytes") or 0, metrics.get("latency_p99_s"), self.memory_budget, self.max_latency_s):
            if metrics["samples_per_s"] > (self.best or 0.0):
                self.best_key, self.best_config = key, dict(row.config)
            self.best = max(self.best or 0.0, metrics["samples_per_s"])
            self.successes.append((row.config, metrics["samples_per_s"]))

    def rates(self) -> tuple[tuple[Config, float], ...]:
        """Every configuration that ran, with its samples/s: a pruned one's warm-up estimate too (it is far
        enough below the best for that to tell what its knob values did)."""
        return tuple((json.loads(key), float(metrics["samples_per_s"])) for key, (status, metrics) in self.seen.items()
                     if status in ("ok", "pruned") and metrics.get("samples_per_s"))

    def outcomes(self) -> dict[str, tuple[str, float]]:
        """Status and samples/s by configuration key, those running included (status ``running``)."""
        known = {key: (status, float(metrics.get("samples_per_s") or 0.0)) for key, (status, metrics) in self.seen.items()}
        known.update({key: ("running", 0.0) for key in self.running})
        return known
