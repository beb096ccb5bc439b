"""SQLAlchemy models of dstune's own tables (prefix ``dstune_``).

They live in the same database as Optuna's tables, so one URL holds a whole
tuning history.  Configurations and metrics are JSON, never pickles.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from dstune.utc import utcnow

SCHEMA_VERSION = 8  # store/migrations.py brings older databases up to it


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Meta(Base):
    """Key/value facts about the database itself (schema version)."""

    __tablename__ = "dstune_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class WorkloadRow(Base):
    __tablename__ = "dstune_workloads"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source_path: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EnvironmentRow(Base):
    __tablename__ = "dstune_environments"
    id: Mapped[int] = mapped_column(primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    facts: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IterationRow(Base):
    """One ``dstune run``: a plan-do-check-act iteration of one workload."""

    __tablename__ = "dstune_iterations"
    id: Mapped[int] = mapped_column(primary_key=True)
    workload_id: Mapped[int] = mapped_column(ForeignKey("dstune_workloads.id"), index=True)
    environment_id: Mapped[int | None] = mapped_column(ForeignKey("dstune_environments.id"))
    study_name: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(20), default="running")
    phase: Mapped[str] = mapped_column(String(20), default="plan")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    host: Mapped[str | None] = mapped_column(String(200))
    pid: Mapped[int | None] = mapped_column(Integer)  # schema 3: finds iterations whose process died
    # Schema 4: written every few seconds while the iteration runs; a stale one means its process is gone.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    schedule_id: Mapped[int | None] = mapped_column(Integer)  # schema 4: the schedule that started it
    options: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    knobs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    default_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    checklist_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    memory_budget_bytes: Mapped[int | None] = mapped_column(BigInteger)
    chosen_trial_id: Mapped[int | None] = mapped_column(Integer)
    chosen_config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    # Plan (schema 2): what changed since the previous iteration, and what this one started from.
    previous_iteration_id: Mapped[int | None] = mapped_column(Integer)
    fingerprint_diff: Mapped[list[Any] | None] = mapped_column(JSON)
    incumbent_config: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    incumbent_source: Mapped[str | None] = mapped_column(String(100))
    # Check and Act (schema 2).
    select_policy: Mapped[str | None] = mapped_column(String(100))
    decision: Mapped[str | None] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(Text)
    speedup: Mapped[float | None] = mapped_column(Float)
    speedup_low: Mapped[float | None] = mapped_column(Float)
    speedup_high: Mapped[float | None] = mapped_column(Float)
    regression: Mapped[bool | None] = mapped_column(Boolean)
    check: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Scale-out (schema 6): trials taken so far by every process of the iteration (at most options.trials),
    # when the Do phase stops starting trials (the coordinator moves it as it learns what the check
    # will cost), and the GPU model the coordinator checks on (trials are compared within one model).
    trials_claimed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    do_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    gpu_model: Mapped[str | None] = mapped_column(String(200))
    # Schema 7: what the Do phase learned and acted on: knob values banned after crashes (run/failures.py).
    learned: Mapped[list[Any] | None] = mapped_column(JSON)
    # Schema 8: the memory model measured in the Plan phase, as corrected by the trials (run/memory_model.py).
    memory_model: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    workload: Mapped[WorkloadRow] = relationship(lazy="joined")
    environment: Mapped[EnvironmentRow | None] = relationship(lazy="joined")


class TrialRow(Base):
    """One trial: a configuration run in a fresh process, and how it ended."""

    __tablename__ = "dstune_trials"
    id: Mapped[int] = mapped_column(primary_key=True)
    iteration_id: Mapped[int] = mapped_column(ForeignKey("dstune_iterations.id"), index=True)
    number: Mapped[int | None] = mapped_column(Integer)
    seed_kind: Mapped[str] = mapped_column(String(20), default="search")
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), index=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duration_s: Mapped[float | None] = mapped_column(Float)
    samples_per_s: Mapped[float | None] = mapped_column(Float)
    step_time_median_s: Mapped[float | None] = mapped_column(Float)
    step_time_cv: Mapped[float | None] = mapped_column(Float)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    peak_allocated: Mapped[int | None] = mapped_column(BigInteger)
    peak_reserved: Mapped[int | None] = mapped_column(BigInteger)
    first_step_s: Mapped[float | None] = mapped_column(Float)
    micro_batch: Mapped[int | None] = mapped_column(Integer)
    accumulation: Mapped[int | None] = mapped_column(Integer)
    energy_per_sample_j: Mapped[float | None] = mapped_column(Float)
    gpu_util_mean: Mapped[float | None] = mapped_column(Float)
    latency_p99_s: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    signal: Mapped[str | None] = mapped_column(String(20))
    stderr_tail: Mapped[str | None] = mapped_column(Text)
    host: Mapped[str | None] = mapped_column(String(200))
    gpu: Mapped[str | None] = mapped_column(String(50))
    # Schema 6: which process ran it (a worker on another host, perhaps), on which GPU model and environment.
    pid: Mapped[int | None] = mapped_column(Integer)
    gpu_model: Mapped[str | None] = mapped_column(String(200))
    environment_id: Mapped[int | None] = mapped_column(Integer)

    iteration: Mapped[IterationRow] = relationship()

    METRIC_COLUMNS = (
        "samples_per_s", "step_time_median_s", "step_time_cv", "peak_memory_bytes", "peak_allocated",
        "peak_reserved", "first_step_s", "micro_batch", "accumulation", "energy_per_sample_j",
        "gpu_util_mean", "latency_p99_s",
    )


class MeasurementRow(Base):
    """One Check-phase re-measurement: incumbent or challenger, in a fresh process, in A B A B order."""

    __tablename__ = "dstune_measurements"
    id: Mapped[int] = mapped_column(primary_key=True)
    iteration_id: Mapped[int] = mapped_column(ForeignKey("dstune_iterations.id"), index=True)
    role: Mapped[str] = mapped_column(String(20))
    round: Mapped[int] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20))
    samples_per_s: Mapped[float | None] = mapped_column(Float)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    energy_per_sample_j: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AppliedRow(Base):
    """A configuration put in production for a workload; the newest row is the one applied.

    Rows are never updated or deleted: promotions and rollbacks add rows, so
    the table is the history of what ran in production and why.
    """

    __tablename__ = "dstune_applied"
    id: Mapped[int] = mapped_column(primary_key=True)
    workload_id: Mapped[int] = mapped_column(ForeignKey("dstune_workloads.id"), index=True)
    iteration_id: Mapped[int | None] = mapped_column(ForeignKey("dstune_iterations.id"))
    source_iteration_id: Mapped[int | None] = mapped_column(Integer)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    reason: Mapped[str] = mapped_column(String(20))
    note: Mapped[str | None] = mapped_column(Text)
    samples_per_s: Mapped[float | None] = mapped_column(Float)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    energy_per_sample_j: Mapped[float | None] = mapped_column(Float)
    applied_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Schema 6: the GPU model it was measured on; each model has its own incumbent (NULL: before schema 6).
    gpu_model: Mapped[str | None] = mapped_column(String(200))

    workload: Mapped[WorkloadRow] = relationship(lazy="joined")


class ScheduleRow(Base):
    """A recurring tuning job: a workload file, ``dstune run`` options, and a cron expression (schema 4).

    ``next_due_at`` only moves on when a run of the schedule ends (or is
    deferred), so a run cut short by a crash or a shutdown is due again when
    a daemon next starts; ``claimed_by`` is the daemon running it now.
    """

    __tablename__ = "dstune_schedules"
    id: Mapped[int] = mapped_column(primary_key=True)
    workload_file: Mapped[str] = mapped_column(Text)
    run_args: Mapped[list[Any]] = mapped_column(JSON, default=list)
    cron: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    host: Mapped[str] = mapped_column(String(200))
    gpu: Mapped[str | None] = mapped_column(String(50))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    next_due_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    claimed_by: Mapped[int | None] = mapped_column(Integer)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    runs: Mapped[int] = mapped_column(Integer, default=0)
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_result: Mapped[str | None] = mapped_column(String(40))
    last_iteration_id: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)


class DaemonRow(Base):
    """One ``dstune daemon`` process: where it runs, which GPU it serves, its heartbeat (schema 4)."""

    __tablename__ = "dstune_daemons"
    id: Mapped[int] = mapped_column(primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    gpu: Mapped[str | None] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20), default="running")  # running, stopped, dead
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    schedule_id: Mapped[int | None] = mapped_column(Integer)  # the schedule it is running now
    note: Mapped[str | None] = mapped_column(Text)  # what it is doing or waiting for
