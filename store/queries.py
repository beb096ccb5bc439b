"""Every read and write dstune makes to its tables.

Each trial is committed in its own transaction the moment it ends, so a
killed run loses at most the trial in flight.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import optuna
from sqlalchemy import func, or_, select
from sqlalchemy.engine import make_url

from dstune.utc import utcnow

from .database import BUSY_TIMEOUT_S, first_use, open_engine
from .iteration_queries import IterationQueries
from .models import AppliedRow, EnvironmentRow, IterationRow, MeasurementRow, TrialRow, WorkloadRow
from .schedule_queries import ScheduleQueries


class Store(IterationQueries, ScheduleQueries):
    """dstune's tables and Optuna's storage on one database URL."""

    def __init__(self, db: str | None = None, create: bool = True) -> None:
        """Open (and, unless ``create`` is False, create) the store at ``db`` (default ``./dstune.db``)."""
        self.url, self.engine, self.sessions = open_engine(db, create)

    @property
    def shown_url(self) -> str:
        """The URL for messages, reports and status: the password replaced by ``***``."""
        return make_url(self.url).render_as_string(hide_password=True)

    def optuna_storage(self, heartbeat_s: int | None = None, grace_s: int | None = None,
                       on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None
                       ) -> optuna.storages.RDBStorage:
        """Optuna's RDB storage on the same database (its own tables, same file).

        With ``heartbeat_s``, running trials are expected to beat that often;
        Optuna's ``fail_stale_trials`` fails one silent for ``grace_s`` and
        calls ``on_stale`` with it.  Optuna creates its tables and stamps its
        version on first use, racing like ours when two runs start together
        on a fresh database.
        """
        kwargs: dict[str, Any] = {}
        if make_url(self.url).get_backend_name() == "sqlite":
            kwargs = {"connect_args": {"timeout": BUSY_TIMEOUT_S}}
        return first_use(lambda: optuna.storages.RDBStorage(
            self.url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_s, grace_period=grace_s,
            heartbeat_stale_trial_callback=on_stale))

    # -- writes ---------------------------------------------------------------

    def _row_id(self, model: type[Any], key: Any, new: dict[str, Any], refresh: dict[str, Any] | None = None) -> int:
        """The id of the ``model`` row where ``key`` holds, inserting one with ``new`` if there is none.

        ``refresh`` is set on a row found.  When a concurrent run inserted the
        same row first, the transaction is tried again and finds it.
        """

        def attempt() -> int:
            with self.sessions.begin() as session:
                row = session.scalar(select(model).where(key))
                if row is None:
                    row = model(**new)
                    session.add(row)
                    session.flush()
                else:
                    for name, value in (refresh or {}).items():
                        setattr(row, name, value)
                return int(row.id)

        return first_use(attempt)

    def workload_id(self, name: str, source_path: str) -> int:
        return self._row_id(WorkloadRow, WorkloadRow.name == name, {"name": name, "source_path": source_path},
                            refresh={"source_path": source_path})

    def environment_id(self, fingerprint: str, facts: dict[str, Any]) -> int:
        return self._row_id(EnvironmentRow, EnvironmentRow.fingerprint == fingerprint,
                            {"fingerprint": fingerprint, "facts": facts})

    @staticmethod
    def _with_metric_columns(fields: dict[str, Any]) -> dict[str, Any]:
        metrics = fields.get("metrics") or {}
        for column in TrialRow.METRIC_COLUMNS:
            if column not in fields and metrics.get(column) is not None:
                value = metrics[column]
                fields[column] = int(value) if column in ("peak_memory_bytes", "peak_allocated", "peak_reserved",
                                                          "micro_batch", "accumulation") else value
        return fields

    def record_trial(self, iteration_id: int, **fields: Any) -> int:
        """Insert one finished trial and commit it at once."""
        return self._insert(TrialRow(iteration_id=iteration_id, ended_at=utcnow(), **self._with_metric_columns(fields)))

    def begin_trial(self, iteration_id: int, **fields: Any) -> int:
        """Insert a trial as ``running`` before it starts, so a killed run leaves a trace of it."""
        return self._insert(TrialRow(iteration_id=iteration_id, status="running", **fields))

    def end_trial(self, trial_id: int, **fields: Any) -> None:
        """Record how a trial begun with :meth:`begin_trial` ended, and commit at once."""
        self._update(TrialRow, trial_id, **self._with_metric_columns(fields), ended_at=utcnow())

    def mark_stale(self, study_name: str, number: int, why: str) -> int | None:
        """Mark the running trial ``number`` of the study's iteration as ``stale``; its row id, or None."""
        with self.sessions.begin() as session:
            row = session.scalar(
                select(TrialRow).join(IterationRow).where(IterationRow.study_name == study_name,
                                                          TrialRow.number == number, TrialRow.status == "running"))
            if row is None:
                return None
            row.status, row.ended_at = "stale", utcnow()
            row.error = f"{why} (it ran on {row.host}, pid {row.pid}, GPU {row.gpu or '-'})"
            return row.id

    def record_measurement(self, iteration_id: int, **fields: Any) -> int:
        """Insert one Check-phase measurement and commit it at once."""
        metrics = fields.get("metrics") or {}
        for column in ("samples_per_s", "peak_memory_bytes", "energy_per_sample_j"):
            if column not in fields and metrics.get(column) is not None:
                fields[column] = int(metrics[column]) if column == "peak_memory_bytes" else metrics[column]
        return self._insert(MeasurementRow(iteration_id=iteration_id, **fields))

    def apply_config(self, workload: str, **fields: Any) -> int:
        """Add an applied-config row outside an iteration (a rollback)."""
        with self.sessions() as session:
            workload_id = session.scalar(select(WorkloadRow.id).where(WorkloadRow.name == workload))
        return self._insert(AppliedRow(workload_id=workload_id, **fields))

    # -- reads ----------------------------------------------------------------

    def workload_names(self) -> list[str]:
        with self.sessions() as session:
            return list(session.scalars(select(WorkloadRow.name).order_by(WorkloadRow.name)))

    def measurements(self, iteration_id: int) -> Sequence[MeasurementRow]:
        with self.sessions() as session:
            query = (select(MeasurementRow).where(MeasurementRow.iteration_id == iteration_id)
                     .order_by(MeasurementRow.id))
            return session.scalars(query).all()

    def applied(self, workload: str, gpu_model: str | None = None) -> AppliedRow | None:
        """The configuration in production for ``workload``: the newest applied row.

        With ``gpu_model``, the newest one measured on that model or naming
        no model (written before schema 6, which holds for every model).
        """
        with self.sessions() as session:
            query = (select(AppliedRow).join(WorkloadRow).where(WorkloadRow.name == workload)
                     .order_by(AppliedRow.id.desc()).limit(1))
            if gpu_model is not None:
                query = query.where(or_(AppliedRow.gpu_model == gpu_model, AppliedRow.gpu_model.is_(None)))
            return session.scalar(query)

    def applied_models(self, workload: str) -> list[str | None]:
        """The GPU models ``workload`` has an applied configuration for (None: rows from before schema 6)."""
        with self.sessions() as session:
            query = (select(AppliedRow.gpu_model).join(WorkloadRow).where(WorkloadRow.name == workload)
                     .distinct())
            return sorted(session.scalars(query).all(), key=lambda m: (m is None, m or ""))

    def applied_history(self, workload: str, newest_first: bool = False, limit: int | None = None
                        ) -> Sequence[AppliedRow]:
        with self.sessions() as session:
            order = AppliedRow.id.desc() if newest_first else AppliedRow.id
            query = select(AppliedRow).join(WorkloadRow).where(WorkloadRow.name == workload).order_by(order)
            if limit is not None:
                query = query.limit(limit)
            return session.scalars(query).all()

    def trials(self, iteration_id: int, status: str | None = None) -> Sequence[TrialRow]:
        with self.sessions() as session:
            query = select(TrialRow).where(TrialRow.iteration_id == iteration_id).order_by(TrialRow.id)
            if status is not None:
                query = query.where(TrialRow.status == status)
            return session.scalars(query).all()

    def status_counts(self, iteration_id: int) -> dict[str, int]:
        with self.sessions() as session:
            rows = session.execute(
                select(TrialRow.status, func.count()).where(TrialRow.iteration_id == iteration_id)
                .group_by(TrialRow.status)
            ).all()
            return {status: count for status, count in rows}

