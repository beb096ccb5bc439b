"""Plain, JSON-ready records of what the store holds about a workload.

``--json`` prints them and the HTML report draws them, so a script, a
dashboard and a person looking at the report all read the same numbers:
the ones recorded, not recomputed.  Times are ISO 8601 in UTC, sizes bytes,
throughput samples per second.
"""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import TYPE_CHECKING, Any, Sequence

from dstune.best_config import applied_best
from dstune.environment_diff import format_change
from dstune.errors import UsageError
from dstune.knobs import describe_config
from dstune.pareto import pareto_front

if TYPE_CHECKING:
    from dstune.store import Store


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def first_line(text: str | None) -> str | None:
    """The last non-empty line of an error (the exception itself), for tables."""
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else None


def iterations_of(store: Store, workload: str) -> list[Any]:
    """The workload's iterations, oldest first; an unknown name is a usage error listing the known ones."""
    iterations = list(store.iterations_of(workload))
    if not iterations:
        names = store.workload_names()
        if workload in names:
            raise UsageError(f"workload {workload!r} in {store.shown_url} has no iterations recorded yet (a run that "
                             "failed before it began records none). Run `dstune run` on it first.")
        known = ", ".join(names) or "none yet"
        raise UsageError(f"no workload named {workload!r} in {store.shown_url} (workloads there: {known}). "
                         "Give a name from that list, or --db for another store.")
    return iterations


def trial_record(row: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row.id, "number": row.number, "seed_kind": row.seed_kind, "status": row.status,
        "config": dict(row.config), "changes": describe_config(row.config, defaults),
        "samples_per_s": row.samples_per_s, "peak_memory_bytes": row.peak_memory_bytes,
        "predicted_peak_bytes": (row.metrics or {}).get("predicted_peak_bytes"),  # the memory model's, before it ran
        "step_time_median_s": row.step_time_median_s, "step_time_cv": row.step_time_cv,
        "first_step_s": row.first_step_s, "duration_s": row.duration_s,
        "expected_duration_s": (row.metrics or {}).get("expected_duration_s"),  # what the run costed it at, before
        "micro_batch": row.micro_batch,
        "accumulation": row.accumulation, "energy_per_sample_j": row.energy_per_sample_j,
        "gpu_util_mean": row.gpu_util_mean, "started_at": iso(row.started_at), "ended_at": iso(row.ended_at),
        "host": row.host, "gpu": row.gpu, "gpu_model": row.gpu_model, "pid": row.pid,
        "error": first_line(row.error),
    }


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def iteration_record(store: Store, iteration: Any) -> dict[str, Any]:
    measurements = list(store.measurements(iteration.id))
    medians = {role: _median([m.samples_per_s for m in measurements if m.role == role and m.samples_per_s])
               for role in ("incumbent", "challenger")}
    counts = store.status_counts(iteration.id)
    facts = iteration.environment.facts if iteration.environment is not None else {}
    return {
        "id": iteration.id, "number": store.iteration_number(iteration.id),  # id: the store's; number: the workload's
        "workload": iteration.workload.name, "study": iteration.study_name,
        "status": iteration.status, "phase": iteration.phase, "started_at": iso(iteration.started_at),
        "ended_at": iso(iteration.ended_at), "host": iteration.host, "device": (iteration.context or {}).get("device_name") or facts.get("gpu") or "cpu",
        "previous_iteration_id": iteration.previous_iteration_id,
        "environment_changes": [{**change, "text": format_change(change)} for change in iteration.fingerprint_diff or []],
        "trials": {"total": sum(counts.values()), **dict(sorted(counts.items()))},
        "incumbent_config": iteration.incumbent_config, "incumbent_source": iteration.incumbent_source,
        "challenger_config": iteration.chosen_config, "select_policy": iteration.select_policy,
        "incumbent_median_samples_per_s": medians["incumbent"],
        "challenger_median_samples_per_s": medians["challenger"],
        "decision": iteration.decision, "reason": iteration.reason,
        "speedup": iteration.speedup, "speedup_low": iteration.speedup_low, "speedup_high": iteration.speedup_high,
        "regression": iteration.regression, "regression_estimate": (iteration.check or {}).get("regression_estimate"),
        "memory_budget_bytes": iteration.memory_budget_bytes, "error": first_line(iteration.error),
        "learned": list(iteration.learned or []),  # knob values the search stopped proposing after crashes
        "memory_model": iteration.memory_model,  # what the Plan phase measured, as the trials corrected it
    }


def history_records(store: Store, workload: str) -> list[dict[str, Any]]:
    """One record per iteration, oldest first (``dstune history --json``)."""
    return [iteration_record(store, iteration) for iteration in iterations_of(store, workload)]


def latest_with_trials(store: Store, iterations: Sequence[Any]) -> Any | None:
    """The newest completed iteration, else the newest with any trials recorded."""
    completed = [i for i in iterations if i.status == "completed"]
    if completed:
        return completed[-1]
    return next((i for i in reversed(iterations) if store.status_counts(i.id)), None)


def fronts_by_model(store: Store, iteration: Any) -> dict[str | None, list[Any]]:
    """The iteration's Pareto front per GPU model: throughput on one model says nothing about another."""
    ok = [t for t in store.trials(iteration.id, status="ok") if t.samples_per_s and t.peak_memory_bytes is not None]
    models = sorted({t.gpu_model for t in ok}, key=lambda m: (m is None, m or ""))
    return {model: pareto_front([t for t in ok if t.gpu_model == model]) for model in models}


def front_records(store: Store, iteration: Any) -> list[dict[str, Any]]:
    defaults = dict(iteration.default_config or {})
    return [trial_record(row, defaults) for front in fronts_by_model(store, iteration).values() for row in front]


def show_record(store: Store, workload: str) -> dict[str, Any]:
    """The incumbent and the latest Pareto front (``dstune show --json``)."""
    iterations = iterations_of(store, workload)
    current = applied_best(store, workload)
    latest = latest_with_trials(store, iterations)
    by_model = {model or "unrecorded": applied_best(store, workload, model) for model in store.applied_models(workload)}
    return {
        "workload": workload,
        "applied": current.to_dict() if current is not None else None,
        "applied_by_gpu_model": {model: best.to_dict() for model, best in by_model.items() if best is not None},
        "latest_iteration_id": latest.id if latest is not None else None,
        "default_config": dict(latest.default_config or {}) if latest is not None else {},
        "pareto_front": front_records(store, latest) if latest is not None else [],
    }
